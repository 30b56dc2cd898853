"""MIMIC-CXR importers: the JPG project (mimic-cxr-jpg 2.0.0) and the DICOM project (mimic-cxr 2.0.0).

Published layouts (PhysioNet):

* mimic-cxr-jpg: ``files/pXX/pNNNNNNNN/sNNNNNNNN/<dicom_id>.jpg``, ``mimic-cxr-2.0.0-metadata.csv.gz``
  (``dicom_id, subject_id, study_id, ViewPosition, ...``), ``mimic-cxr-2.0.0-split.csv.gz``
  (``dicom_id, study_id, subject_id, split`` with ``train``/``validate``/``test``) and
  ``mimic-cxr-2.0.0-chexpert.csv.gz`` (``subject_id, study_id`` + CheXpert's 14 labels). No reports: they
  come from the DICOM project's ``mimic-cxr-reports/files/pXX/pNNNNNNNN/sNNNNNNNN.txt`` (``--reports``).
* mimic-cxr: ``cxr-record-list.csv.gz`` (``subject_id, study_id, dicom_id, path``), the DICOMs under
  ``files/`` and the reports beside each study folder (``files/pXX/pNNNNNNNN/sNNNNNNNN.txt``). Views
  come from each file's ViewPosition tag (or the JPG project's metadata, the same tag, with
  ``--jpg-meta``); split and labels only with ``--jpg-meta``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from ...errors import DataError
from ..prepare import parallel_map
from .common import CHEXPERT_LABELS, corpus_file, import_labels, patient_folder, read_table

_META = ("mimic-cxr-2.0.0-metadata.csv.gz", "mimic-cxr-2.0.0-metadata.csv")
_SPLIT = ("mimic-cxr-2.0.0-split.csv.gz", "mimic-cxr-2.0.0-split.csv")
_LABELS = ("mimic-cxr-2.0.0-chexpert.csv.gz", "mimic-cxr-2.0.0-chexpert.csv")
_RECORDS = ("cxr-record-list.csv.gz", "cxr-record-list.csv")
_SPLIT_NAMES = {"train": "train", "validate": "val", "test": "test"}


def jpg_tables(meta_dir: Path, corpus: str, uncertain: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The JPG project's metadata (views), split and CheXpert label tables, checked."""
    meta_file = corpus_file(meta_dir, _META, corpus, "the JPG project's per-image metadata")
    split_file = corpus_file(meta_dir, _SPLIT, corpus, "the JPG project's official split")
    label_file = corpus_file(meta_dir, _LABELS, corpus, "the JPG project's CheXpert labels")
    meta = read_table(meta_file, ("dicom_id", "subject_id", "study_id", "ViewPosition"))
    split = read_table(split_file, ("dicom_id", "split"))
    labels = read_table(label_file, ("subject_id", "study_id", *CHEXPERT_LABELS))
    bad = sorted(set(split["split"]) - set(_SPLIT_NAMES))
    if bad:
        raise DataError(f"{split_file}: unknown split value(s) {', '.join(map(repr, bad))} "
                        "(expected train, validate, test)")
    split = split.assign(split=split["split"].map(_SPLIT_NAMES))
    labels = import_labels(labels[["subject_id", "study_id", *CHEXPERT_LABELS]].copy(), CHEXPERT_LABELS,
                           uncertain, str(label_file))
    return meta, split[["dicom_id", "split"]], labels


def _with_split_and_labels(df: pd.DataFrame, split: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    df = df.merge(split.drop_duplicates("dicom_id"), on="dicom_id", how="left")
    df = df.merge(labels.drop_duplicates(["subject_id", "study_id"]), on=["subject_id", "study_id"], how="left")
    return df.fillna("")


def _report_paths(reports: Path, df: pd.DataFrame) -> list[str]:
    base = str(reports / "files")
    return [f"{base}/{patient_folder(p)}/s{s}.txt" for p, s in zip(df["patient_id"], df["study_id"])]


def import_mimic_jpg(root: str | os.PathLike, reports: str | os.PathLike | None = None,
                     uncertain: str = "keep", **_) -> pd.DataFrame:
    """Rows of the MIMIC-CXR-JPG project: one per image, with view, official split and CheXpert labels.

    Args:
        root: the project folder (holding ``files/`` and the ``mimic-cxr-2.0.0-*.csv.gz`` tables).
        reports: the ``mimic-cxr-reports`` folder (holding ``files/pXX/...``); without it the manifest has
            no reports and is an evaluation manifest.
        uncertain: ``keep`` (write -1) or a ``labels.uncertain`` policy applied now.
    """
    root = Path(root)
    corpus_file(root, ("files",), "mimic-cxr-jpg", "the image folder files/pXX/pNNNNNNNN/sNNNNNNNN/")
    meta, split, labels = jpg_tables(root, "mimic-cxr-jpg", uncertain)
    df = meta[["dicom_id", "subject_id", "study_id", "ViewPosition"]].rename(columns={"ViewPosition": "view"})
    df = _with_split_and_labels(df, split, labels)
    base = str(root.resolve() / "files")
    df.insert(0, "image", [f"{base}/{patient_folder(p)}/s{s}/{d}.jpg"
                           for p, s, d in zip(df["subject_id"], df["study_id"], df["dicom_id"])])
    df = df.rename(columns={"subject_id": "patient_id"})
    if reports is not None:
        reports = Path(reports).resolve()
        corpus_file(reports, ("files",), "mimic-cxr-reports", "the report folder files/pXX/pNNNNNNNN/sNNNNNNNN.txt")
        df.insert(1, "report_path", _report_paths(reports, df))
    return df


def import_mimic_dicom(root: str | os.PathLike, reports: str | os.PathLike | None = None,
                       jpg_meta: str | os.PathLike | None = None, uncertain: str = "keep",
                       workers: int | None = None, **_) -> pd.DataFrame:
    """Rows of the MIMIC-CXR DICOM project: one per DICOM file, with its report and view.

    Args:
        root: the project folder (holding ``cxr-record-list.csv.gz`` and ``files/``).
        reports: folder holding the reports' ``files/pXX/...`` (default: ``root``, as published).
        jpg_meta: the JPG project's folder (or a folder with its ``mimic-cxr-2.0.0-*.csv.gz`` tables):
            official split, CheXpert labels and views.
        uncertain: ``keep`` (write -1) or a ``labels.uncertain`` policy applied now.
        workers: processes reading ViewPosition tags (default: all cores).
    """
    root = Path(root).resolve()
    records = read_table(corpus_file(root, _RECORDS, "mimic-cxr", "the DICOM project's record list"),
                         ("subject_id", "study_id", "dicom_id", "path"))
    corpus_file(root, ("files",), "mimic-cxr", "the DICOM folder files/pXX/pNNNNNNNN/sNNNNNNNN/")
    df = pd.DataFrame({"image": [str(root / p) for p in records["path"]], "dicom_id": records["dicom_id"],
                       "subject_id": records["subject_id"], "study_id": records["study_id"].str.lstrip("s")})
    if jpg_meta is not None:
        meta, split, labels = jpg_tables(Path(jpg_meta), "mimic-cxr-jpg metadata (--jpg-meta)", uncertain)
        views = meta.drop_duplicates("dicom_id").set_index("dicom_id")["ViewPosition"]
        df["view"] = df["dicom_id"].map(views).fillna("")
        df = _with_split_and_labels(df, split, labels)
    else:
        df["view"] = view_positions(df["image"].tolist(), workers)
        df["split"] = ""
    df = df.rename(columns={"subject_id": "patient_id"})
    df.insert(1, "report_path", _report_paths(Path(reports).resolve() if reports else root, df))
    return df


def view_positions(paths: list[str], workers: int | None = None) -> list[str]:
    """Each DICOM file's ViewPosition tag (``""`` when absent or unreadable), read in parallel."""
    workers = workers or os.cpu_count() or 1
    return parallel_map(_view_position, paths, 1 if len(paths) < 256 else workers, chunksize=256)


def _view_position(path: str) -> str:
    import pydicom

    from ..dicom import quiet_pydicom

    with quiet_pydicom():  # pydicom's messages about a damaged header can quote patient names
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["ViewPosition"])
            return str(getattr(ds, "ViewPosition", "") or "").strip()
        except (OSError, ValueError, pydicom.errors.InvalidDicomError, EOFError):
            return ""
