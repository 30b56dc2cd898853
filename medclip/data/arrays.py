"""In-memory images (PIL image, NumPy array, torch tensor) → the float [0, 1] arrays medclip's transforms use.

Rules (a one-line :class:`~medclip.errors.DataError` otherwise):

* PIL: 8-bit modes (``L``, ``RGB``; others such as ``P``/``RGBA``/``LA`` are converted to ``RGB``) are divided
  by 255, 16-bit (``I;16``) by 65535;
* NumPy ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)``: ``uint8`` / 255, ``uint16`` / 65535, floats must already be
  in [0, 1];
* torch ``(H, W)`` or ``(C, H, W)`` with C = 1 or 3 (channels first, as torchvision): same dtype rules.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ..errors import DataError

_SCALE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


def is_in_memory(image) -> bool:
    """True for a PIL image, a NumPy array or a torch tensor (not a path)."""
    return isinstance(image, (np.ndarray, torch.Tensor, Image.Image))


def image_to_array(image) -> np.ndarray:
    """``(H, W)`` or ``(H, W, 3)`` float32 in [0, 1] from an in-memory image (see the module rules)."""
    if isinstance(image, torch.Tensor):
        arr = image.detach().cpu().numpy()
        if arr.ndim == 3 and arr.shape[0] in (1, 3):
            arr = np.moveaxis(arr, 0, -1)
        elif arr.ndim != 2:
            raise DataError(f"image tensor must be (H, W) or (C, H, W) with C = 1 or 3, got {tuple(image.shape)}")
    elif isinstance(image, np.ndarray):
        arr = image
    else:
        if image.mode not in ("L", "RGB", "I;16"):
            image = image.convert("RGB")
        arr = np.asarray(image)
        if image.mode == "I;16":
            arr = arr.astype(np.uint16)
    return _to_unit(arr)


def _to_unit(arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] == 3)):
        raise DataError(f"image array must be (H, W), (H, W, 1) or (H, W, 3), got {arr.shape}")
    if arr.dtype in _SCALE:
        return arr.astype(np.float32) / _SCALE[arr.dtype]
    if not np.issubdtype(arr.dtype, np.floating):
        raise DataError(f"image array dtype {arr.dtype} is not supported (uint8, uint16 or float in [0, 1])")
    arr = arr.astype(np.float32)
    if arr.size and (not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1):
        raise DataError("float image arrays must be finite and in [0, 1] (divide by the maximum first)")
    return arr


def source_dtype(image):
    """The integer type a file-based pipeline would store this image's resized pixels in (None for floats):
    8-bit sources ``uint8``, 16-bit ``uint16`` — so a path and its in-memory pixels give the same tensor."""
    if isinstance(image, torch.Tensor):
        return {torch.uint8: np.uint8}.get(image.dtype)
    if isinstance(image, np.ndarray):
        return image.dtype.type if image.dtype in _SCALE else None
    return np.uint16 if image.mode == "I;16" else np.uint8
