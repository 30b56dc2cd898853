"""Area resize of a pointwise intensity table applied to integer pixels, without the full-size float image.

``torch.nn.functional.interpolate(mode="area")`` (what MONAI's ``Resized(mode="area")`` calls) is
``adaptive_avg_pool2d``: output pixel ``(i, j)`` is the mean over input rows ``[floor(i*H/h), ceil((i+1)*H/h))``
and columns ``[floor(j*W/w), ceil((j+1)*W/w))``. For a grayscale DICOM the intensity chain (Modality LUT,
VOI window/LUT, [0, 1], MONOCHROME1) is a function ``T`` of the stored integer value, tabulated once per
possible value. The mean of ``T(v)`` over a window whose values all lie on one straight piece of ``T``
(within a linear window, or wholly clipped) equals ``T`` interpolated at the window's mean stored value, so
it comes from exact integer window sums: one integer pass over the stored pixels, no per-pixel float or
lookup. Windows that straddle a bend of ``T`` (an edge at the window's limits, a non-linear VOI LUT) are
gathered through the table exactly. The result is the float64 mean of ``T`` over each window up to float64
rounding (the float32 full-size path it replaces rounded at ~1e-7, so the uint16 quantised outputs differ
by at most 1 step, at near-ties).
"""

from __future__ import annotations

import os

import numpy as np

_REL_TOL = 1e-9  # slopes of one straight piece of T agree to float64 rounding; bends differ far more


def area_windows(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Start and end indices of the windows that torch's adaptive average pooling averages over."""
    i = np.arange(n_out, dtype=np.int64)
    return (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)


def table_area_mean(arr: np.ndarray, table: np.ndarray, vmin: int, out_shape: tuple[int, int]) -> np.ndarray:
    """Area-resize ``table[arr - vmin]`` to ``out_shape`` exactly, doing float work only on small arrays.

    Args:
        arr: (H, W) integer pixels, all in ``[vmin, vmin + len(table))``.
        table: float64 value of each stored value from ``vmin`` on.
        vmin: the smallest value of ``arr``.
        out_shape: (h, w) of the result.

    Returns:
        np.ndarray: (h, w) float64, the mean of ``table[arr - vmin]`` over each area window.
    """
    (h, w), (rows, cols) = out_shape, arr.shape
    rs, re = area_windows(rows, h)
    cs, ce = area_windows(cols, w)
    count = np.outer(re - rs, ce - cs).astype(np.float64)
    largest = max(abs(vmin), abs(vmin + len(table) - 1))
    mean = _window_sums(arr, rs, re, cs, ce, largest) / count
    piece = _piece_ids(table)
    if piece[0] == piece[-1]:  # T is one straight piece over every value present
        return _interpolate(table, 0, len(table) - 1, mean - vmin)
    lo, hi = _window_extremes(arr, rs, re, cs, ce)
    lo, hi = lo.astype(np.int64) - vmin, hi.astype(np.int64) - vmin
    out = _interpolate(table, lo, hi, mean - vmin)
    straight = piece[lo] == piece[np.maximum(hi - 1, lo)]
    for i in np.flatnonzero(~straight.all(axis=1)):  # strips with a window across a bend: gather exactly
        strip = table.take(arr[rs[i]:re[i]].astype(np.int64) - vmin).sum(axis=0)
        sums = np.add.reduceat(strip, _reduceat_index(cs, ce))[0::2]
        bent = ~straight[i]
        out[i, bent] = sums[bent] / count[i, bent]
    return out


def _piece_ids(table: np.ndarray) -> np.ndarray:
    """For each step ``k -> k+1`` of the table, the id of the straight piece it belongs to (one extra at the end)."""
    if len(table) < 2:
        return np.zeros(1, dtype=np.int64)
    step = np.diff(table)
    bend = np.abs(np.diff(step)) > _REL_TOL * (np.abs(step[1:]) + np.abs(step[:-1])) + 1e-300
    ids = np.concatenate([[0], np.cumsum(bend)])
    return np.concatenate([ids, ids[-1:]])


def _interpolate(table: np.ndarray, lo, hi, offset: np.ndarray) -> np.ndarray:
    """``table`` on the straight line through ``lo`` and ``hi`` (indices), at ``offset``."""
    lo, hi = np.asarray(lo), np.asarray(hi)
    t_lo, t_hi = table[lo], table[hi]
    span = np.where(hi > lo, hi - lo, 1)
    return t_lo + (t_hi - t_lo) / span * (offset - lo)


def _reduceat_index(start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Indices for ``np.add.reduceat`` whose even results are the windows' sums (windows may overlap by one)."""
    index = np.empty(2 * len(start) - 1, dtype=np.int64)
    index[0::2], index[1::2] = start, end[:-1]
    return index


def _accumulator(dtype: np.dtype, top: int) -> type:
    """The narrowest integer type that holds sums up to ``top`` (``uint16`` sums of 12-bit pixels are fastest)."""
    if dtype.kind == "u" and top < 1 << 16:
        return np.uint16
    if dtype.kind == "u" and top < 1 << 32:
        return np.uint32
    return np.int32 if top < 1 << 31 else np.int64


def _window_sums(arr, rs, re, cs, ce, largest: int) -> np.ndarray:
    """Exact integer sums of ``arr`` (``|values| <= largest``) over each area window: rows first (contiguous
    adds of whole rows), then columns on the small result."""
    acc = _accumulator(arr.dtype, max(largest, 1) * int((re - rs).max()))
    strips = np.empty((len(rs), arr.shape[1]), dtype=acc)
    for i, (start, end) in enumerate(zip(rs.tolist(), re.tolist())):
        np.add.reduce(arr[start:end], axis=0, dtype=acc, out=strips[i])
    return np.add.reduceat(strips.astype(np.int64), _reduceat_index(cs, ce), axis=1)[:, 0::2].astype(np.float64)


def _window_extremes(arr, rs, re, cs, ce) -> tuple[np.ndarray, np.ndarray]:
    """Smallest and largest value in each area window."""
    low = np.empty((len(rs), arr.shape[1]), dtype=arr.dtype)
    high = np.empty_like(low)
    for i, (start, end) in enumerate(zip(rs.tolist(), re.tolist())):
        arr[start:end].min(axis=0, out=low[i])
        arr[start:end].max(axis=0, out=high[i])
    index = _reduceat_index(cs, ce)
    return np.minimum.reduceat(low, index, axis=1)[:, 0::2], np.maximum.reduceat(high, index, axis=1)[:, 0::2]


def stored_frame(ds, path: str, frame: int = 0) -> np.ndarray | None:
    """One frame of the stored values of an uncompressed little-endian unsigned 8/16-bit single-sample DICOM
    read straight from ``path`` (``ds`` read with pixel data deferred); None for any other kind of file, or
    one shorter than its header says. Bits above ``BitsStored`` are not masked here (callers check the maximum);
    otherwise equal to that frame of pydicom's ``pixel_array``."""
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    uid = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    raw = ds.get_item("PixelData", keep_deferred=True)
    try:
        rows, cols, bits = int(ds.Rows), int(ds.Columns), int(ds.BitsAllocated)
        plain = (uid in (ExplicitVRLittleEndian, ImplicitVRLittleEndian) and bits in (8, 16)
                 and int(ds.get("SamplesPerPixel", 1)) == 1 and int(ds.get("PixelRepresentation", 0)) == 0
                 and 0 < int(ds.BitsStored) <= bits and 0 <= frame < int(ds.get("NumberOfFrames", 1) or 1))
    except (AttributeError, TypeError, ValueError):
        return None
    tell, size = getattr(raw, "value_tell", None), rows * cols * bits // 8
    if not plain or getattr(raw, "value", b"") is not None or tell is None or size == 0:
        return None  # not deferred: a small file, read whole by the usual path
    if raw.length < (frame + 1) * size or os.path.getsize(path) < tell + raw.length:
        return None
    dtype = np.uint8 if bits == 8 else np.dtype("<u2")
    return np.fromfile(path, dtype=dtype, count=rows * cols, offset=tell + frame * size).reshape(rows, cols)
