"""Datasets and data loaders: manifest → checked, split, cached, tokenised dict batches.

A batch is a dict: ``image`` (B, C, H, W) float32, ``text`` (B, context_length) token ids,
``patient_id`` and ``path`` (lists of str), and ``labels`` (B, n_labels) float32 when label columns
are configured (NaN = unknown).
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import DataError, MedclipError
from ..loss import text_id
from .config import DataConfig
from .csvsafe import write_csv
from .manifest import check_manifest, image_reason, load_manifest, splits_manifest, write_quarantine
from .splits import carve_validation, given_splits, split_leak_free
from .transforms import build_image_transform

logger = logging.getLogger("medclip.data")


class ImageReportDataset(Dataset):
    """Image-report pairs from a checked manifest.

    Args:
        df: rows with ``image`` (path), ``text`` (or ``report``) and ``patient_id`` columns.
        image_transform: callable ``path -> FloatTensor (C, H, W)`` (see ``build_image_transform``).
        tokenizer: callable ``list[str] -> LongTensor (B, context_length)``.
        label_columns: columns returned as a float ``labels`` vector.
    """

    def __init__(self, df: pd.DataFrame, image_transform, tokenizer, label_columns=()):
        self.df = df.reset_index(drop=True)
        self.image_transform, self.tokenizer = image_transform, tokenizer
        self.label_columns = list(label_columns)
        missing = [c for c in ["image", *self.label_columns] if c not in self.df.columns]
        if missing:
            raise DataError(f"dataset rows lack column(s) {', '.join(missing)}")
        column = "text" if "text" in self.df.columns else "report"
        self.texts = self.df[column].fillna("").astype(str).tolist()
        self.text_ids = [text_id(t) for t in self.texts]  # identical reports share an id (masked in the loss)
        self.paths = self.df["image"].astype(str).tolist()
        self.patients = self.df["patient_id"].astype(str).tolist() if "patient_id" in self.df else [""] * len(df)
        self.labels = (torch.tensor(self.df[self.label_columns].astype("float32").to_numpy())
                       if self.label_columns else None)

    def __len__(self) -> int:
        return len(self.df)

    def __getitem__(self, index: int) -> dict:
        index, image = self._first_readable(index)
        item = {
            "image": image,
            "text": self.tokenizer([self.texts[index]])[0],
            "text_id": self.text_ids[index],
            "patient_id": self.patients[index],
            "path": self.paths[index],
        }
        if self.labels is not None:
            item["labels"] = self.labels[index]
        return item

    def _first_readable(self, index: int):
        """``(index, image)`` of this row, or of the next readable one when its image fails mid-run (only
        possible with ``data.verify_images: false``): logged with the file and the reason, never an abort."""
        for step in range(len(self.paths)):
            i = (index + step) % len(self.paths)
            try:
                return i, self.image_transform(self.paths[i])
            except MedclipError as exc:
                logger.warning("data: skipped %s in this batch (%s); set data.verify_images: true to quarantine "
                               "unreadable images before training", self.paths[i], image_reason(exc, self.paths[i]))
        raise DataError("no image of this dataset can be read (every row failed; run medclip data check)")


def _read_prepared_manifest(manifest: Path, folder: Path, data_config: DataConfig
                            ) -> tuple[pd.DataFrame, pd.DataFrame, Path]:
    """:func:`prepare_manifest`'s result for a manifest ``medclip data prepare`` checked and split once
    (``folder``: its prepared folder)."""
    from .prepare import QUARANTINE, read_prepared

    good, info = read_prepared(folder)
    wanted = list(data_config.sections) if data_config.sections else None
    if info.get("reports", True) and info.get("sections") != wanted:
        raise DataError(f"{manifest}: prepared with report sections {info.get('sections')}, the recipe wants "
                        f"{wanted}; run 'medclip data prepare' with --sections {','.join(wanted or ['all'])}")
    logger.info("data: %d prepared rows from %s (checked once by 'medclip data prepare')", len(good), manifest)
    quarantine = pd.read_csv(folder / QUARANTINE, dtype={"image": str}, keep_default_na=False)
    return good, quarantine, folder / QUARANTINE


def prepare_manifest(data_config: DataConfig, decode=None, seed: int = 0,
                     out_dir: str | os.PathLike | None = None) -> tuple[pd.DataFrame, pd.DataFrame, Path]:
    """Load, check, quarantine and (if needed) split the manifest of ``data_config``.

    Args:
        data_config: the data config.
        decode: image check callable (e.g. an ``ImageTransform.prepare`` that also fills the cache).
        seed: split seed (used when the manifest has no split column).
        out_dir: where ``quarantine.csv`` and ``splits.csv`` go (default: ``data_config.quarantine_dir``,
            else the manifest's folder, else a temporary folder when that is read-only).

    Returns:
        ``(good rows with a split column, quarantine table, quarantine.csv path)``.
    """
    manifest = Path(data_config.manifest)
    if data_config.demo:
        from .demo import demo_corpus_current, make_demo_corpus

        if not demo_corpus_current(manifest):  # missing, or written by an older version: never reuse that
            logger.info("data: generating the demo corpus in %s", manifest.parent)
            manifest = Path(make_demo_corpus(manifest.parent, manifest_name=manifest.name))
    from .prepare import prepared_dir

    prepared = prepared_dir(manifest)
    if prepared:  # `medclip data prepare` checked and split it once: read, never re-check
        return _read_prepared_manifest(manifest, prepared, data_config)
    df = load_manifest(manifest, data_config.columns)
    good, quarantine = check_manifest(df, data_config.sections, decode=decode, verify_images=data_config.verify_images,
                                      sections_missing=data_config.sections_missing)
    folder = Path(out_dir or data_config.quarantine_dir or manifest.parent)
    if not os.access(folder if folder.exists() else folder.parent, os.W_OK):
        folder = Path(tempfile.mkdtemp(prefix="medclip-quarantine-"))
    qpath = write_quarantine(quarantine, folder)
    if len(quarantine):
        logger.warning("data: %d of %d manifest rows skipped (quarantined); the list with reasons is in %s",
                       len(quarantine), len(df), qpath)
    else:
        logger.info("data: all %d manifest rows ok (empty quarantine list: %s)", len(df), qpath)
    if good.empty:
        raise DataError(f"{manifest}: no usable rows (all {len(df)} quarantined, see {qpath})")
    if given_splits(good, manifest):
        if data_config.val > 0 and not (good["split"] == "val").any() and (good["split"] == "train").any():
            good = carve_validation(good, data_config.val, seed)
            write_csv(splits_manifest(good), folder / "splits.csv", keep=data_config.columns.labels)
            logger.info("data: no validation split given: %d training rows (whole patients, data.val %.2f) "
                        "validate instead, never test rows; written to %s", (good["split"] == "val").sum(),
                        data_config.val, folder / "splits.csv")
    else:
        good = split_leak_free(good, data_config.val, data_config.test, seed)
        write_csv(splits_manifest(good), folder / "splits.csv", keep=data_config.columns.labels)
        logger.info("data: leak-free split (seed %d) written to %s", seed, folder / "splits.csv")
    return good, quarantine, qpath


def build_dataloaders(data_config: DataConfig, model_config, tokenizer, seed: int = 0,
                      out_dir: str | os.PathLike | None = None,
                      train_batch_size: int | None = None) -> dict[str, DataLoader]:
    """Data loaders per split: checked rows only, leak-free splits, cached preprocessing, train augmentation.

    Args:
        data_config: the data config.
        model_config: a :class:`medclip.config.ModelConfig` (or its ``vision`` config): image size,
            channels and normalisation come from it.
        tokenizer: ``medclip.get_tokenizer(model_config)``.
        seed: split and shuffle seed.
        out_dir: folder for ``quarantine.csv``/``splits.csv`` (e.g. the run folder).
        train_batch_size: rows per batch of the ``train`` loader (shuffled, augmented, last incomplete batch
            dropped). None: ``data_config.eval_batch_size``, the ``val``/``test`` loaders' size, which is
            rarely the training batch (``train.batch_size``): pass it. The trainer does not use this
            loader's batches (:class:`~medclip.data.source.CsvSource` samples ``train.batch_size`` rows per
            rank from its dataset).

    Returns:
        ``{"train": loader, "val": loader, "test": loader}`` for the splits that have rows; each
        loader's ``dataset.df`` is the split's manifest.
    """
    vision = getattr(model_config, "vision", model_config)
    manifest = Path(data_config.manifest).resolve()
    kwargs = dict(resize=data_config.resize, cache_dir=data_config.cache_dir, window_index=data_config.window_index,
                  frame=data_config.frame, limits=data_config.limits())
    root = manifest if manifest.is_dir() else manifest.parent  # cache keys relative to the manifest's folder
    eval_tf = build_image_transform(vision, train=False, **kwargs).set_cache_root(root)
    train_tf = build_image_transform(vision, train=True, augment=data_config.augment, **kwargs).set_cache_root(root)
    good, _, _ = prepare_manifest(data_config, decode=eval_tf.prepare, seed=seed, out_dir=out_dir)
    labels = data_config.columns.labels
    loaders = {}
    for split in ("train", "val", "test"):
        rows = good[good["split"] == split]
        if rows.empty:
            continue
        train = split == "train"
        dataset = ImageReportDataset(rows, train_tf if train else eval_tf, tokenizer, labels)
        generator = torch.Generator().manual_seed(seed)
        size = (train_batch_size or data_config.eval_batch_size) if train else data_config.eval_batch_size
        loaders[split] = DataLoader(
            dataset, batch_size=size, shuffle=train, generator=generator,
            drop_last=train and len(rows) >= size, num_workers=data_config.num_workers,
            persistent_workers=data_config.num_workers > 0,
        )
    sizes = ", ".join(f"{k} {len(v.dataset)}" for k, v in loaders.items())
    logger.info("data: %s rows", sizes)
    return loaders
