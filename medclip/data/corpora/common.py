"""What every corpus importer shares: finding the corpus's files, reading its CSVs, writing the manifest.

An importer returns a DataFrame with absolute ``image`` paths and the canonical manifest columns
(``report`` or ``report_path`` for training corpora; ``patient_id``, ``study_id``, ``split``, ``view``
and label columns). :func:`write_manifest` makes the paths relative to the manifest's folder, so the
manifest and the caches keyed by it survive another mount point.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ...errors import DataError, MissingFileError
from ..csvsafe import write_csv
from ..labels import UNCERTAIN_POLICIES, binary_labels, check_policy, normalize_cell

FRONTAL_VIEWS = ("PA", "AP")
# CheXpert's 14 observations, in the order of its CSVs (also MIMIC-CXR's chexpert.csv.gz columns)
CHEXPERT_LABELS = ("No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
                   "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
                   "Pleural Other", "Fracture", "Support Devices")
IMPORT_POLICIES = ("keep", *UNCERTAIN_POLICIES)


def corpus_file(root: Path, names: Sequence[str], corpus: str, what: str = "") -> Path:
    """The first of ``names`` (relative to ``root``) that exists; else a one-line error naming it.

    Raises:
        MissingFileError: ``root`` is not the named corpus (says which file is missing).
    """
    for name in names:
        if (root / name).exists():
            return root / name
    wanted = " or ".join(names)
    raise MissingFileError(f"{root}: not a {corpus} root: {wanted} is missing{' (' + what + ')' if what else ''}")


def read_table(path: Path, columns: Sequence[str] = (), sep: str = ",") -> pd.DataFrame:
    """A corpus CSV (plain or .gz) as strings, checking that ``columns`` are present."""
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, sep=sep, encoding="utf-8")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable CSV ({str(exc).splitlines()[0]})") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"{path}: column(s) {', '.join(missing)} missing (columns: {', '.join(df.columns)}); "
                        "is this the corpus's original file?")
    return df


def import_labels(df: pd.DataFrame, columns: Sequence[str], uncertain: str, where: str) -> pd.DataFrame:
    """Label columns written as ``1``/``0``/``""`` (and ``-1`` for uncertain with ``keep``), checked.

    Args:
        df: the table holding the label columns (changed in place and returned).
        columns: the label columns.
        uncertain: ``keep`` writes uncertain as ``-1`` (evaluation applies ``labels.uncertain`` later);
            ``ones``/``zeros``/``ignore`` apply that policy now.
        where: file name for error messages.
    """
    if uncertain not in IMPORT_POLICIES:
        check_policy(uncertain, "--uncertain")
    for column in columns:
        values = binary_labels(df[column], column, "ignore" if uncertain == "keep" else uncertain, where=where)
        text = pd.Series(values).map({1.0: "1", 0.0: "0"}).fillna("")
        if uncertain == "keep":
            text[df[column].map(normalize_cell).isin(["-1", "uncertain", "u"]).to_numpy()] = "-1"
        df[column] = text.to_numpy()
    return df


def patient_folder(subject_id: str) -> str:
    """MIMIC-CXR's ``pXX/pNNNNNNNN`` folder of a subject id."""
    return f"p{subject_id[:2]}/p{subject_id}"


def write_manifest(df: pd.DataFrame, output: str | os.PathLike) -> Path:
    """Write ``df`` as a manifest CSV with ``image`` / ``report_path`` relative to the manifest's folder."""
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    from ..prepare import relative_paths

    df = df.copy()
    for column in ("image", "report_path"):
        if column in df.columns:
            df[column] = relative_paths(df[column], out.resolve().parent)
    write_csv(df, out)
    return out


def summary(df: pd.DataFrame, dropped_views: int = 0) -> str:
    """One line: rows, patients, studies, rows per split (never patient ids)."""
    splits = df["split"].replace("", "unsplit").value_counts() if "split" in df else pd.Series(dtype=int)
    parts = [f"{len(df)} images", f"{df['patient_id'].nunique()} patients"]
    if "study_id" in df:
        parts.append(f"{df['study_id'].nunique()} studies")
    parts += [f"{name} {count}" for name, count in splits.items()]
    if dropped_views:
        parts.append(f"{dropped_views} images without a frontal view (PA/AP) left out")
    if df.attrs.get("left_out"):
        parts.append(df.attrs["left_out"])
    return ", ".join(parts)
