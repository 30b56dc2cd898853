"""Importers for the public chest X-ray corpora in their published layouts (``medclip data import``).

Each importer reads a corpus's own files and writes a medclip manifest: ``image`` (relative to the
manifest's folder), ``report`` or ``report_path`` for corpora with reports (training manifests),
``patient_id``, ``study_id``, ``split`` (the corpus's official one, or empty: split leak-free later),
``view`` and the label columns (``1``/``0``/``-1`` uncertain/empty, see :mod:`medclip.data.labels`).
Corpora without reports (CheXpert, ChestX-ray14) give evaluation manifests: images + labels.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from ...errors import ConfigError
from .common import FRONTAL_VIEWS, summary, write_manifest
from .labelled import CHESTXRAY14_LABELS, import_chestxray14, import_chexpert
from .mimic import import_mimic_dicom, import_mimic_jpg
from .paired import PADCHEST_FRONTAL, import_iu_xray, import_padchest

logger = logging.getLogger("medclip.data")


@dataclass(frozen=True)
class Corpus:
    """One importable corpus: its reader, whether it trains (has reports), and its frontal view names."""

    reader: Callable[..., pd.DataFrame]
    trains: bool
    frontal: tuple = FRONTAL_VIEWS
    help: str = ""


CORPORA: dict[str, Corpus] = {
    "mimic-cxr-jpg": Corpus(import_mimic_jpg, True, help="MIMIC-CXR-JPG 2.0.0 (+ --reports mimic-cxr-reports/)"),
    "mimic-cxr": Corpus(import_mimic_dicom, True, help="MIMIC-CXR 2.0.0 DICOM (+ --jpg-meta for split/labels)"),
    "chexpert": Corpus(import_chexpert, False, help="CheXpert-v1.0[-small] (evaluation: labels, no reports)"),
    "chestxray14": Corpus(import_chestxray14, False, help="NIH ChestX-ray14 (evaluation: labels, no reports)"),
    "padchest": Corpus(import_padchest, True, PADCHEST_FRONTAL, help="PadChest (Spanish reports, 16-bit PNG)"),
    "iu-xray": Corpus(import_iu_xray, True, help="IU X-ray / Open-i PNGs + --reports XML archive (.tgz)"),
}


def import_corpus(name: str, root: str | os.PathLike, output: str | os.PathLike, frontal_only: bool = False,
                  **options) -> tuple[pd.DataFrame, str]:
    """Import corpus ``name`` from ``root`` into the manifest ``output``.

    Args:
        name: one of :data:`CORPORA`.
        root: the corpus folder as published.
        output: the manifest CSV to write.
        frontal_only: keep only frontal images (PA/AP; rows with no recorded view are left out too).
        **options: ``reports``, ``jpg_meta``, ``uncertain`` (``keep`` or a ``labels.uncertain`` policy).

    Returns:
        ``(manifest rows as written, one-line summary)``.

    Raises:
        MissingFileError: ``root`` is not the named corpus (the message names the missing file).
    """
    if name not in CORPORA:
        raise ConfigError(f"unknown corpus '{name}'; choose one of {', '.join(CORPORA)}")
    corpus = CORPORA[name]
    df = corpus.reader(root, frontal_only=frontal_only, **options)
    dropped = 0
    if frontal_only:
        keep = df["view"].isin(corpus.frontal)
        dropped = int((~keep).sum())
        df = df[keep].reset_index(drop=True)
    path = write_manifest(df, output)
    kind = "training" if corpus.trains and ("report" in df or "report_path" in df) else "evaluation (no reports)"
    line = f"{name}: {summary(df, dropped)}; {kind} manifest written to {path}"
    logger.info(line)
    return df, line


__all__ = ["CHESTXRAY14_LABELS", "CORPORA", "Corpus", "import_corpus", "write_manifest"]
