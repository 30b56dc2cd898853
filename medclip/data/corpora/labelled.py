"""Evaluation corpora without reports: CheXpert and ChestX-ray14 (labels only).

Their manifests have no report column: ``zeroshot``, ``probe`` and the few-shot adapters read them
(images + labels); nothing quarantines their rows for a missing report.

* chexpert: ``CheXpert-v1.0[-small]/{train,valid}.csv`` with ``Path, Sex, Age, Frontal/Lateral, AP/PA``
  and the 14 observations (``1.0``/``0.0``/``-1.0`` uncertain/empty). ``Path`` starts with
  ``CheXpert-v1.0-small/`` or ``CheXpert-v1.0/`` whichever folder the images are really in.
  ``train.csv`` → split ``train``, ``valid.csv`` (radiologist-labelled) → ``val``.
* chestxray14: ``Data_Entry_2017.csv`` (``Image Index, Finding Labels`` joined by ``|``, ``Patient ID``,
  ``View Position``), ``train_val_list.txt`` → ``train``, ``test_list.txt`` → ``test``, images in
  ``images/`` or ``images_NNN/images/``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd

from ...errors import DataError
from .common import CHEXPERT_LABELS, corpus_file, import_labels, read_table

CHESTXRAY14_LABELS = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
                      "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening",
                      "Hernia")
_CHEXPERT_DIRS = ("CheXpert-v1.0-small", "CheXpert-v1.0")
_PATH_PREFIX = re.compile(r"^(?:\./)?CheXpert-v1\.0(?:-small)?/")


def _chexpert_folder(root: Path) -> Path:
    """The folder holding ``train.csv``: ``root`` itself or its ``CheXpert-v1.0[-small]`` subfolder."""
    for folder in (root, *(root / d for d in _CHEXPERT_DIRS)):
        if (folder / "train.csv").is_file():
            return folder
    names = [f"{d}/train.csv" for d in _CHEXPERT_DIRS]
    return corpus_file(root, ("train.csv", *names), "chexpert", "the training label table").parent


def import_chexpert(root: str | os.PathLike, uncertain: str = "keep", **_) -> pd.DataFrame:
    """Rows of CheXpert (train + valid): image, patient, study, split, view and the 14 labels.

    Args:
        root: ``CheXpert-v1.0[-small]`` or the folder holding it.
        uncertain: ``keep`` (write -1) or a ``labels.uncertain`` policy applied now.
    """
    folder = _chexpert_folder(Path(root)).resolve()
    tables = []
    for name, split in (("train.csv", "train"), ("valid.csv", "val")):
        if name == "valid.csv" and not (folder / name).is_file():
            continue
        table = read_table(folder / name, ("Path", "Frontal/Lateral", "AP/PA", *CHEXPERT_LABELS))
        tables.append(import_labels(table, CHEXPERT_LABELS, uncertain, str(folder / name)).assign(split=split))
    df = pd.concat(tables, ignore_index=True)
    rel = df["Path"].str.strip().str.replace(_PATH_PREFIX, "", regex=True)
    parts = rel.str.split("/")
    bad = rel[parts.str.len() < 4]
    if len(bad):
        raise DataError(f"{folder}: Path value {bad.iloc[0]!r} is not <split>/patientNNNNN/studyN/viewN_*.jpg")
    frontal = df["Frontal/Lateral"].str.strip().str.lower() == "frontal"
    out = pd.DataFrame({
        "image": [str(folder / p) for p in rel],
        "patient_id": parts.str[1], "study_id": parts.str[1] + "/" + parts.str[2], "split": df["split"],
        "view": df["AP/PA"].str.strip().where(frontal, "LATERAL"),
    })
    for label in CHEXPERT_LABELS:
        out[label] = df[label].to_numpy()
    return out


def _cxr14_image_index(root: Path) -> dict[str, str]:
    """Image file name → path over ``images/`` and ``images_NNN/images/``."""
    folders = [root / "images", *sorted(root.glob("images_*/images"))]
    folders = [f for f in folders if f.is_dir()]
    if not folders:
        corpus_file(root, ("images", "images_001/images"), "chestxray14", "the PNG image folder(s)")
    index = {}
    for folder in folders:
        with os.scandir(folder) as entries:
            index.update({e.name: e.path for e in entries if e.name.lower().endswith(".png")})
    return index


def _read_list(path: Path) -> set[str]:
    return {line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()}


def import_chestxray14(root: str | os.PathLike, **_) -> pd.DataFrame:
    """Rows of NIH ChestX-ray14: image, patient, follow-up as study, official split, view, 14 labels.

    Args:
        root: the folder holding ``Data_Entry_2017.csv`` (the v2020 name ``Data_Entry_2017_v2020.csv``
            is read too) and the image folders.
    """
    root = Path(root).resolve()
    entry_file = corpus_file(root, ("Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv"), "chestxray14",
                             "the label table")
    train_list = corpus_file(root, ("train_val_list.txt",), "chestxray14", "the official train/val image list")
    test_list = corpus_file(root, ("test_list.txt",), "chestxray14", "the official test image list")
    entries = read_table(entry_file, ("Image Index", "Finding Labels", "Follow-up #", "Patient ID", "View Position"))
    train, test = _read_list(train_list), _read_list(test_list)
    index = _cxr14_image_index(root)
    names = entries["Image Index"].str.strip()
    findings = entries["Finding Labels"].str.split("|").map(lambda xs: {x.strip() for x in xs} - {"", "No Finding"})
    unknown = sorted(set().union(*findings) - set(CHESTXRAY14_LABELS))
    if unknown:
        raise DataError(f"{entry_file}: column 'Finding Labels' has unknown label(s) "
                        f"{', '.join(map(repr, unknown[:5]))} (expected {', '.join(CHESTXRAY14_LABELS)}, No Finding)")
    out = pd.DataFrame({
        "image": [index.get(n, str(root / "images" / n)) for n in names],
        "patient_id": entries["Patient ID"].str.strip(),
        "study_id": entries["Patient ID"].str.strip() + "/" + entries["Follow-up #"].str.strip(),
        "split": ["test" if n in test else "train" if n in train else "" for n in names],
        "view": entries["View Position"].str.strip(),
    })
    for label in CHESTXRAY14_LABELS:
        out[label] = ["1" if label in f else "0" for f in findings]
    return out
