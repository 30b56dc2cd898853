"""Evaluation inputs: labelled image tables (manifest CSV or class-per-folder tree) and image encoding.

* :func:`read_labelled_images` turns ``--manifest`` (a CSV, or a folder whose subfolders are the
  classes) plus a class file into a table with ``image``, ``patient_id``, ``split`` and the labels.
* :func:`encode_images` embeds images in batches with the model's own preprocessing
  (:func:`medclip.data.transforms.build_image_transform`); unreadable images are quarantined with
  their reason instead of stopping the run.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..defaults import EVAL_BATCH_SIZE
from ..errors import DataError
from .prompts import ClassFile
from .task import Task, label_kind

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".dcm", ".dicom", ".bmp", ".tif", ".tiff")


def folder_table(root: str | os.PathLike, cf: ClassFile) -> pd.DataFrame:
    """Table of a class-per-subfolder image tree (``root/<class>/<image>``).

    A file belongs to the class whose ``values`` (default: the class name) contain its folder name
    and, when given, one of whose ``filename_contains`` strings is in its file name. Files matching
    no class are left out (e.g. a folder the class file does not mention); a file matching two
    classes is an error in the class file.
    """
    root = Path(root)
    rows, patient = [], re.compile(cf.patient_regex) if cf.patient_regex else None
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in sorted(folder.rglob("*")):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            hits = [i for i, name in enumerate(cf.names) if _folder_matches(cf, name, folder.name, path.name)]
            if len(hits) > 1:
                raise DataError(f"{path}: matches classes {[cf.names[i] for i in hits]}; make 'values' / "
                                "'filename_contains' in the class file exclusive")
            if hits:
                match = patient.search(path.name) if patient else None
                rows.append({"image": str(path.resolve()), "label": hits[0], "split": "",
                             "patient_id": match.group(0) if match else path.stem})
    if not rows:
        raise DataError(f"{root}: no images in subfolders named like the classes {cf.names} "
                        "(expected <folder>/<class>/<image>; set 'values' in the class file)")
    return pd.DataFrame(rows)


def _folder_matches(cf: ClassFile, name: str, folder: str, filename: str) -> bool:
    spec = cf.classes[name]
    if folder.lower() not in [str(v).lower() for v in (spec.values or [name])]:
        return False
    return not spec.filename_contains or any(s.lower() in filename.lower() for s in spec.filename_contains)


def manifest_frame(path: str | os.PathLike) -> pd.DataFrame:
    """A manifest CSV read as strings (empty cells stay ``""``)."""
    from ..data.manifest import read_manifest_csv

    return read_manifest_csv(path)


def manifest_table(path: str | os.PathLike, cf: ClassFile, image_column: str = "image") -> pd.DataFrame:
    """Read a manifest CSV and attach labels from its columns (see :func:`read_labelled_images`)."""
    return attach_labels(manifest_frame(path), cf, Path(path).resolve().parent, image_column, str(path))


def attach_labels(df: pd.DataFrame, cf: ClassFile | Task, root: str | os.PathLike = ".",
                  image_column: str = "image", where: str = "manifest") -> pd.DataFrame:
    """Canonical ``image`` (absolute), ``patient_id``, ``split`` and label columns for a manifest table.

    Args:
        df: the manifest rows (as read from CSV).
        cf: the class file (or its :class:`~medclip.eval.task.Task`), which reads the labels.
        root: folder that relative image paths are relative to.
        image_column: the column of image paths.
        where: name used in error messages.
    """
    if image_column not in df.columns:
        raise DataError(f"{where}: no '{image_column}' column (columns: {', '.join(map(str, df.columns))})")
    task = cf if isinstance(cf, Task) else Task.from_class_file(cf)
    df = df.reset_index(drop=True).copy()
    root = Path(root).resolve()
    df["image"] = [str(p) if os.path.isabs(str(p)) else str(root / str(p)) for p in df[image_column]]
    df["patient_id"] = df["patient_id"].fillna("").astype(str).str.strip() if "patient_id" in df.columns else ""
    df["split"] = df["split"].fillna("").astype(str).str.strip().str.lower() if "split" in df.columns else ""
    for column, values in task.manifest_labels(df, where).items():
        df[column] = values
    return df


def read_labelled_images(source: str | os.PathLike | pd.DataFrame, cf: ClassFile,
                         image_column: str = "image") -> pd.DataFrame:
    """Images and labels from a manifest CSV or a class-per-folder tree.

    Args:
        source: a CSV manifest (columns ``image``, optional ``patient_id``, ``split`` and label columns)
            or a folder whose subfolders are the classes (single-label only), or an already loaded
            manifest DataFrame (relative image paths are then relative to the working directory).
        cf: the class file (says which columns/folders hold which class).
        image_column: the manifest's image-path column (relative paths are relative to the manifest).

    Returns:
        DataFrame with ``image`` (absolute path), ``patient_id``, ``split`` (``""`` when absent) and
        ``label`` (class index, -1 = unlabelled) for single-label or ``label/<condition>`` (1/0/NaN)
        for multi-label, plus the manifest's other columns.
    """
    if isinstance(source, pd.DataFrame):
        return attach_labels(source, cf, image_column=image_column, where="manifest table")
    if os.path.isdir(source):
        if not label_kind(cf.task).exclusive:  # a folder gives one class per image
            raise DataError(f"{source}: a folder tree gives one class per image; use a manifest CSV with one "
                            "column per condition for a multi-label class file")
        return folder_table(source, cf)
    return manifest_table(source, cf, image_column)


class _ImageFiles(torch.utils.data.Dataset):
    def __init__(self, paths, transform):
        self.paths, self.transform = list(paths), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        from ..data.manifest import image_reason

        try:
            return i, self.transform(self.paths[i]), ""
        except Exception as exc:  # one bad file is quarantined with data check's reason, never stops the run
            return i, None, image_reason(exc, str(self.paths[i]))


def _collate(items):
    ok = [(i, x) for i, x, _ in items if x is not None]
    bad = [(i, reason) for i, x, reason in items if x is None]
    images = torch.stack([x for _, x in ok]) if ok else None
    return [i for i, _ in ok], images, bad


@torch.no_grad()
def encode_images(model, paths, transform=None, batch_size: int = EVAL_BATCH_SIZE, num_workers: int = 0,
                  progress: bool = True) -> tuple[torch.Tensor, np.ndarray, list[tuple[int, str]]]:
    """Normalised image embeddings of ``paths`` (in order), skipping unreadable files.

    Args:
        model: a :class:`medclip.CLIP` (in eval mode).
        paths: image files.
        transform: ``path -> (C, H, W)`` tensor; default: the model's eval preprocessing.
        batch_size: images per forward pass.
        num_workers: DataLoader workers.
        progress: show a tqdm bar.

    Returns:
        ``(features (M, D), indices of the M encoded paths, [(index, reason), ...] of the quarantined)``.
    """
    from tqdm.auto import tqdm

    if transform is None:
        from ..data.transforms import build_image_transform

        transform = build_image_transform(model.config.vision, train=False)
    loader = torch.utils.data.DataLoader(_ImageFiles(paths, transform), batch_size=batch_size,
                                         num_workers=num_workers, collate_fn=_collate)
    device = next(model.parameters()).device
    feats, kept, bad = [], [], []
    bar = tqdm(total=len(paths), desc="images", unit="img", disable=not progress, leave=False)  # counts images
    for index, images, failed in loader:
        bad += failed
        if images is not None:
            feats.append(model.encode_image(images.to(device)).float().cpu())
            kept += index
        bar.update(len(index) + len(failed))
    bar.close()
    if not feats:
        reason = bad[0][1] if bad else "no images given"
        raise DataError(f"no image could be read ({len(bad)} failed; first: {reason})")
    return torch.cat(feats), np.asarray(kept, dtype=int), bad
