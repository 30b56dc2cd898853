"""Manifests: a CSV of image paths and reports, loaded with canonical column names and checked row by row.

Canonical columns after :func:`load_manifest`: ``image`` (absolute path), ``report`` (text; read from
``report_path`` files when the text column is absent or empty), ``patient_id``, ``study_id`` and
``split`` (strings, ``""`` when absent), the configured label columns, every other column as is, plus
``line`` (the row's line number in the CSV, header = line 1) and ``image_raw`` (the value as written).

:func:`check_manifest` splits a manifest into good rows and a quarantine table (``line``, ``image``,
``reason``): missing/empty/undecodable images, empty or non-UTF-8 reports, duplicate rows (same image
and same report). The same image with different reports is kept: several captions of one image.
"""

from __future__ import annotations

import os
import stat
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from ..errors import DataError, MedclipError, require_file
from .config import ManifestColumns
from .csvsafe import unescape_frame, write_csv
from .reports import extract_sections, normalize_whitespace, read_report_file

SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {"training": "train", "valid": "val", "validation": "val", "dev": "val", "testing": "test"}
QUARANTINE_COLUMNS = ["line", "image", "reason"]
# columns load_manifest adds (an input manifest must not carry them), and with check_manifest's ``text``
RESERVED_COLUMNS = ("line", "image_raw", "report_error")
DERIVED_COLUMNS = (*RESERVED_COLUMNS, "text", "whole_report")


def load_manifest(path: str | os.PathLike, columns: ManifestColumns | dict | None = None,
                  reports: bool = True) -> pd.DataFrame:
    """Read a manifest CSV and rename its columns to medclip's canonical names.

    Args:
        path: the CSV file.
        columns: a :class:`ManifestColumns` (or dict of its fields) naming your columns.
        reports: False for an evaluation manifest (images + labels): no report column is required.

    Returns:
        A DataFrame with canonical columns (see the module docstring).

    Raises:
        DataError: the file is not a CSV, or a required/configured column is missing (the message lists
            the columns found and the config key to set).
    """
    raw, cols = read_manifest_table(path, columns, reports)
    df = canonical_rows(raw, cols, Path(path).resolve().parent)
    df["line"] = row_lines(path, len(df))
    return df


def read_manifest_table(path: str | os.PathLike, columns: ManifestColumns | dict | None = None,
                        reports: bool = True) -> tuple[pd.DataFrame, ManifestColumns]:
    """The manifest CSV as strings, its columns checked (see :func:`load_manifest`), and the column names."""
    from ..config import from_dict

    cols = columns if isinstance(columns, ManifestColumns) else from_dict(ManifestColumns, columns, "data.columns")
    raw = read_manifest_csv(path)
    found = ", ".join(raw.columns) or "none"
    if cols.image not in raw.columns:
        raise DataError(f"{path}: no image column '{cols.image}' (columns: {found}); "
                        f"set data.columns.image (CLI: --column image=NAME)")
    if reports and cols.report not in raw.columns and cols.report_path not in raw.columns:
        raise DataError(f"{path}: no report column '{cols.report}' or '{cols.report_path}' (columns: {found}); "
                        f"set data.columns.report or data.columns.report_path (CLI: --column report=NAME)")
    missing = [c for c in cols.labels if c not in raw.columns]
    if missing:
        raise DataError(f"{path}: label column(s) {', '.join(missing)} not found (columns: {found}); "
                        f"fix data.columns.labels")
    reserved = [c for c in RESERVED_COLUMNS if c in raw.columns]
    if reserved:
        raise DataError(f"{path}: column(s) {', '.join(reserved)} are reserved for what medclip derives "
                        f"(row number, raw path, report error); rename them in the CSV")
    return raw, cols


def read_manifest_csv(path: str | os.PathLike) -> pd.DataFrame:
    """A manifest CSV as strings (``""`` for empty cells, spreadsheet escapes removed), checked for the
    mistakes that would otherwise be a traceback or an empty run: a folder, an empty or header-only
    file, another delimiter, another encoding.

    Raises:
        DataError: one line naming the file and the fix.
    """
    require_file(path, "manifest")
    if os.path.isdir(path):
        raise DataError(f"{path} is a folder; this command needs a manifest CSV (a folder with one subfolder per "
                        "class works for zeroshot and the few-shot commands)")
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: empty manifest (no header, no rows)") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        raise DataError(f"{path}: not a readable UTF-8 CSV manifest ({str(exc).splitlines()[0]})") from None
    if len(raw.columns) == 1:
        for sep, name in ((";", "semicolon"), ("\t", "tab"), ("|", "pipe")):
            if sep in str(raw.columns[0]):
                raise DataError(f"{path}: the header is {name}-separated ('{sep}'); medclip reads comma-separated "
                                "CSV: save the file with ',' as the delimiter")
    if raw.empty:
        raise DataError(f"{path}: the manifest has a header but no rows")
    return unescape_frame(raw)


def row_lines(path, n_rows: int) -> list[int]:
    """The file line on which each data row starts (quoted multi-line reports span several lines)."""
    import csv

    starts, previous = [], 0
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        for row in reader:
            if any(cell.strip() for cell in row):  # pandas skips blank lines as well
                starts.append(previous + 1)
            previous = reader.line_num
    starts = starts[1:]  # the header
    return starts if len(starts) == n_rows else list(range(2, n_rows + 2))

def splits_manifest(df: pd.DataFrame) -> pd.DataFrame:
    """A loaded (and split) manifest as a CSV-ready manifest again: canonical column names, absolute image
    paths, the ``split`` column, the original row number as ``source_line``; the columns that
    :func:`load_manifest` / :func:`check_manifest` derive are dropped, so the file loads as a manifest."""
    out = df.drop(columns=[c for c in DERIVED_COLUMNS if c in df.columns])
    out.insert(0, "source_line", df["line"].to_numpy())
    return out


def canonical_rows(raw: pd.DataFrame, cols: ManifestColumns, root: Path, first_line: int = 2) -> pd.DataFrame:
    """Rows of :func:`read_manifest_table` with canonical columns; ``first_line`` is the CSV line of the first
    row (a slice of a manifest keeps its line numbers); relative paths are relative to ``root``."""
    rename = {getattr(cols, k): k for k in ("image", "report", "report_path", "patient_id", "study_id", "split")
              if getattr(cols, k) in raw.columns and getattr(cols, k) != k}
    canonical = set(rename.values())
    clashes = [c for c in raw.columns if c in canonical and c not in rename]
    df = raw.drop(columns=clashes).rename(columns=rename)
    df.insert(0, "line", range(first_line, first_line + len(df)))
    df["image_raw"] = df["image"].str.strip()
    base = str(root)  # already resolved: joining + normalising is exact and ~20x faster than resolve() per row
    df["image"] = [os.path.normpath(os.path.join(base, p)) if p else "" for p in df["image_raw"]]
    for key in ("report", "report_path", "patient_id", "study_id", "split"):
        if key not in df.columns:
            df[key] = ""
        df[key] = df[key].fillna("").astype(str)
    df["patient_id"] = df["patient_id"].str.strip()
    df["report"], df["report_error"] = _read_reports(df["report"].tolist(), df["report_path"].tolist(), base)
    df["split"] = [_SPLIT_ALIASES.get(s.strip().lower(), s.strip().lower()) for s in df["split"]]
    bad = sorted(set(df["split"]) - set(SPLITS) - {""})
    if bad:
        raise DataError(f"split column has unknown value(s) {', '.join(map(repr, bad))}; use train, val or test")
    for label in cols.labels:
        df[label] = pd.to_numeric(df[label].replace("", float("nan")), errors="coerce").astype("float32")
    return df.reset_index(drop=True)


def _read_reports(reports: list[str], paths: list[str], base: str) -> tuple[list[str], list[str]]:
    """Report texts (read from ``paths`` where the text is empty) and per-row read errors; each file read once."""
    texts, errors, seen = list(reports), [""] * len(reports), {}
    for i, (text, rel) in enumerate(zip(reports, paths)):
        if text.strip() or not rel.strip():
            continue
        report_file = os.path.normpath(os.path.join(base, rel.strip()))
        if report_file not in seen:
            try:  # open directly (one syscall less than checking first); errors get read_report_file's message
                with open(report_file, encoding="utf-8") as f:
                    seen[report_file] = (f.read(), "")
            except (OSError, UnicodeDecodeError):
                try:
                    seen[report_file] = (read_report_file(report_file), "")
                except (MedclipError, OSError) as exc:
                    seen[report_file] = ("", _reason(exc, report_file))
        texts[i], errors[i] = seen[report_file]
    return texts, errors


def check_manifest(df: pd.DataFrame, sections: list[str] | None = ("findings", "impression"),
                   decode: Callable[[str], object] | None = None, verify_images: bool = True,
                   progress: bool = False, reports: bool = True,
                   sections_missing: str = "whole") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Validate every row; return ``(good_df, quarantine_df)``.

    Good rows get a ``text`` column: the report sections that feed the text tower. Quarantine reasons
    are one line each: ``image file not found``, ``empty file (0 bytes)``, ``not a DICOM file ...``,
    ``empty report``, ``report is not UTF-8 ...``, ``duplicate of line N (same image and report)``, ...

    Args:
        df: a manifest from :func:`load_manifest`.
        sections: report sections used as text (see :func:`~medclip.data.reports.extract_sections`).
        decode: called once per distinct image path; raising :class:`~medclip.errors.MedclipError`
            quarantines the image's rows (default: :func:`~medclip.data.transforms.load_image`).
        verify_images: decode every image (otherwise only existence and size are checked).
        progress: show a tqdm progress bar.
        reports: False for an evaluation manifest: only images are checked (never "empty report").
        sections_missing: a report with headings but none of ``sections`` (``History:``/``Follow-up:``
            only): ``whole`` uses the whole report (good rows get ``whole_report`` True, counted by
            :func:`summarize`), ``quarantine`` quarantines the row.

    Returns:
        tuple[pd.DataFrame, pd.DataFrame]: the good rows (with ``text``) and the quarantine table
        (``line``, ``image``, ``reason``).
    """
    from tqdm.auto import tqdm

    if decode is None:
        from .transforms import load_image as decode
    reasons, texts, whole = _check_reports(df, sections, reports, sections_missing)
    image_errors = {}
    images = df["image"].to_dict()
    paths = sorted({images[i] for i in texts})
    for path in tqdm(paths, desc="checking images", disable=not progress, leave=False):
        image_errors[path] = _image_problem(path, decode if verify_images else None)
    for i in texts:
        if image_errors[images[i]]:
            reasons[i] = image_errors[images[i]]
    good = df.loc[[i for i in df.index if i not in reasons]].copy()
    good["text"] = [texts[i] for i in good.index]
    good["whole_report"] = [i in whole for i in good.index]
    lines, raw = df["line"].to_dict(), df["image_raw"].to_dict()
    quarantine = pd.DataFrame([(int(lines[i]), raw[i], reasons[i]) for i in sorted(reasons)],
                              columns=QUARANTINE_COLUMNS)
    return good.reset_index(drop=True), quarantine


def _check_reports(df: pd.DataFrame, sections, reports: bool, sections_missing: str = "whole"):
    """Per-row quarantine reasons from the reports (and duplicates), the text of the rows still good, and
    the rows whose whole report is used (headings, but none of ``sections``)."""
    reasons: dict[int, str] = {}
    texts, whole = {}, set()
    first_seen: dict = {}
    extracted: dict[str, str] = {}  # one extraction per distinct report (MIMIC: ~1.65 images per report)
    for i, line, image, report, error in zip(df.index, df["line"], df["image"], df["report"], df["report_error"]):
        if error:
            reasons[i] = error
            continue
        if report not in extracted:
            extracted[report] = extract_sections(report, sections) if reports else ""
        text = extracted[report]
        if reports and not text and sections_missing == "whole" and normalize_whitespace(report):
            text = normalize_whitespace(report)
            whole.add(i)
        if not reports and image and image not in first_seen:
            first_seen[image] = int(line)
            texts[i] = ""
        elif not reports:
            reasons[i] = f"duplicate of line {first_seen[image]} (same image)" if image else "no image path in this row"
        elif not normalize_whitespace(report):
            reasons[i] = "empty report"
        elif not text:
            reasons[i] = f"report has none of the sections {', '.join(s.upper() for s in sections)}"
        elif not image:
            reasons[i] = "no image path in this row"
        elif (image, text) in first_seen:
            reasons[i] = f"duplicate of line {first_seen[(image, text)]} (same image and report)"
        else:
            first_seen[(image, text)] = int(line)
            texts[i] = text
    return reasons, texts, whole


def _image_problem(path: str, decode: Callable | None) -> str:
    """One-line reason why ``path`` is unusable, or ``""``."""
    try:
        st = os.stat(path)  # one stat call per image (377k for MIMIC)
    except OSError:
        return "image file not found"
    if stat.S_ISDIR(st.st_mode):
        return "image path is a folder, not a file"
    if st.st_size == 0:
        return "empty image file (0 bytes)"
    if decode is None:
        return ""
    try:
        decode(path)
    except Exception as exc:  # any failure of one file is that file's quarantine reason, never the run's end
        return image_reason(exc, path)
    return ""


def image_reason(exc: BaseException, path: str) -> str:
    """The quarantine reason for an image that failed to load: the same text in ``data check``, training,
    zero-shot and retrieval (the error's first line without the ``path: `` prefix, the type for non-project errors)."""
    from ..data.transforms import _unwrap

    err = exc if isinstance(exc, MedclipError) else _unwrap(exc)
    return _reason(err, path)


def _reason(exc: BaseException, path: str) -> str:
    """The error's first line without the leading ``path: `` (the quarantine table names the file)."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text[len(path) + 2:] if text.startswith(f"{path}: ") else text


def write_quarantine(quarantine: pd.DataFrame, out_dir: str | os.PathLike) -> Path:
    """Write ``quarantine.csv`` (line, image, reason) into ``out_dir`` and return its path.

    Args:
        quarantine: the quarantine table of :func:`check_manifest`.
        out_dir: the folder (created if missing).

    Returns:
        Path: ``out_dir/quarantine.csv``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "quarantine.csv"
    write_csv(quarantine.reindex(columns=QUARANTINE_COLUMNS), path)
    return path


def summarize(good: pd.DataFrame, quarantine: pd.DataFrame) -> pd.DataFrame:
    """Summary table: rows ok, then rows quarantined per reason (durations/line numbers folded together)."""
    kinds = Counter(_reason_kind(r) for r in quarantine["reason"])
    rows = [("ok", len(good))]
    if "whole_report" in good.columns and good["whole_report"].any():
        rows.append(("  of which whole report used (none of the sections)", int(good["whole_report"].sum())))
    rows += sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0]))
    return pd.DataFrame(rows, columns=["status", "rows"])


def _reason_kind(reason: str) -> str:
    """Group reasons that differ only by details (``duplicate of line 7`` → ``duplicate``)."""
    if reason.startswith("duplicate of line"):
        return "duplicate row (same image and report)"
    return reason.split(" (")[0]


def phi_tag_counts(paths) -> dict[str, int]:
    """How many DICOM files carry each PHI tag (counts only; values are never read out or logged)."""
    from .dicom import is_dicom, phi_tags_present

    counts: Counter = Counter()
    for path in paths:
        if path and os.path.isfile(path) and is_dicom(path):
            counts.update(phi_tags_present(path))
    return dict(sorted(counts.items()))
