"""The grayscale display chain of a DICOM (Modality LUT → VOI LUT or window → [0, 1] → MONOCHROME1 inverted),
full size or area-resized straight from the stored integers (:mod:`medclip.data.area`).

Split from :mod:`medclip.data.dicom`, which decodes files and turns every failure into one line.
"""

from __future__ import annotations

import numpy as np

from .area import table_means, window_stats

PERCENTILES = (0.5, 99.5)


def _grayscale_to_unit(ds, arr: np.ndarray, photometric: str, window_index: int) -> np.ndarray:
    """Modality LUT, VOI window/LUT, [0, 1], MONOCHROME1 inversion. For a large integer image with a stored
    window the chain (pointwise) runs once per distinct stored value and is gathered: the same float64 values,
    ~10x faster than on every pixel of a 2544x3056 radiograph."""
    if arr.dtype.kind in "ui" and arr.size > 1 << 16 and _has_voi(ds):
        lo = int(arr.min())
        offset = (arr.astype(np.int64) - lo if arr.dtype.kind == "i" else arr - lo).ravel()
        if int(offset.max()) < 1 << 20:
            present = np.flatnonzero(np.bincount(offset))
            values = _gray_chain(ds, (present + lo).astype(arr.dtype), photometric, window_index)
            if values.dtype.kind == "f" and np.isfinite(values).all():
                table = np.zeros(int(present[-1]) + 1, dtype=values.dtype)
                table[present] = values
                return table[offset].reshape(arr.shape)
    return _gray_chain(ds, arr, photometric, window_index)


def _gray_chain(ds, arr: np.ndarray, photometric: str, window_index: int) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    arr = apply_modality_lut(arr, ds).astype(np.float64)
    if not np.isfinite(arr).all():
        return arr  # reported as NaN pixels by the caller
    if _has_voi(ds):
        index = min(window_index, _n_windows(ds) - 1)
        arr = apply_voi_lut(arr, ds, index=index)
        lo, hi = _voi_output_range(ds, arr, index)
    else:  # no window stored: robust percentiles, as viewers do
        lo, hi = np.percentile(arr, PERCENTILES)
        arr = np.clip(arr, lo, hi)
    out = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    out = np.clip(out, 0.0, 1.0)
    return 1.0 - out if photometric == "MONOCHROME1" else out


def _has_voi(ds) -> bool:
    return "VOILUTSequence" in ds or ("WindowCenter" in ds and "WindowWidth" in ds)


def _n_windows(ds) -> int:
    if "VOILUTSequence" in ds:
        return len(ds.VOILUTSequence)
    return ds["WindowCenter"].VM or 1


def _voi_output_range(ds, arr: np.ndarray, index: int) -> tuple[float, float]:
    """Output range of the VOI transform: what it maps the lowest and highest possible inputs to."""
    from pydicom.pixels import apply_voi_lut

    extremes = np.array([-(2**40), 2**40], dtype=np.int64 if "VOILUTSequence" in ds else np.float64)
    try:
        lo, hi = (float(v) for v in apply_voi_lut(extremes, ds, index=index))
    except (ValueError, IndexError, TypeError):
        lo, hi = float(arr.min()), float(arr.max())
    return (lo, hi) if hi > lo else (float(arr.min()), float(arr.max()))


def _area_resized(ds, rows_of, shape: tuple[int, int], dtype, photometric: str, window_index: int, shape_for,
                  bits: int | None = None) -> np.ndarray | None:
    """The grayscale chain area-resized to ``shape_for(H, W)`` (:mod:`medclip.data.area`); None where that does
    not apply (float pixels, no stored window: percentiles need every pixel, upsampling, values of ``bits``
    or more bits)."""
    out = shape_for(*shape)
    if dtype.kind not in "ui" or not _has_voi(ds) or out[0] > shape[0] or out[1] > shape[1]:
        return None
    info = np.iinfo(dtype)
    stats = window_stats(rows_of, shape, out, (1 << bits) - 1 if bits else max(-int(info.min), int(info.max)))
    vmin, vmax = int(stats.low.min()), int(stats.high.max())
    if vmax - vmin >= 1 << 20 or (bits is not None and vmax >= 1 << bits):
        return None
    table = _gray_chain(ds, np.arange(vmin, vmax + 1).astype(dtype), photometric, window_index)
    if table.dtype.kind != "f" or not np.isfinite(table).all():
        return None  # the full-size path reports it
    return table_means(rows_of, stats, table.astype(np.float64, copy=False), vmin)
