"""How preprocessed images are stored (caches, shards): quantised to the source's bit depth.

A decoded, resized image in [0, 1] is stored as ``uint8`` (8-bit sources: JPEG, 8-bit PNG, DICOM with
``BitsStored`` <= 8) or ``uint16`` (more bits: 12-16-bit DICOM, 16-bit PNG) — 4x / 2x smaller than
float32. The first (uncached) pass is quantised the same way, so a cached or sharded image equals the
first pass bit for bit.
"""

from __future__ import annotations

import os

import numpy as np
import pydicom
from PIL import Image

from .dicom import is_dicom, quiet_pydicom

STORED_DTYPES = (np.uint8, np.uint16)


def stored_dtype(path: str | os.PathLike) -> type:
    """``np.uint16`` when the source has more than 8 bits per sample, else ``np.uint8`` (header read only)."""
    if is_dicom(path):
        try:
            with quiet_pydicom():  # pydicom's messages about a damaged header can quote patient names
                ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["BitsStored"])
                bits = int(getattr(ds, "BitsStored", 16) or 16)
        except Exception:  # noqa: BLE001 - decoding reports the file's real problem; keep all bits here
            bits = 16
        return np.uint16 if bits > 8 else np.uint8
    try:
        with Image.open(path) as image:
            mode = image.mode
    except Exception:  # noqa: BLE001 - not an image Pillow knows: decoding reports it
        return np.uint8
    return np.uint16 if mode.startswith("I") or mode == "F" else np.uint8


def quantize(arr: np.ndarray, dtype: type) -> np.ndarray:
    """[0, 1] floats → ``dtype`` integers (round to nearest)."""
    top = np.iinfo(dtype).max
    return np.round(np.clip(arr, 0.0, 1.0) * np.float32(top)).astype(dtype)


def dequantize(stored: np.ndarray) -> np.ndarray:
    """Stored integers → float32 in [0, 1] (the same arithmetic for cache, shard and first pass)."""
    return stored.astype(np.float32) / np.float32(np.iinfo(stored.dtype).max)
