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
from typing import NamedTuple

import numpy as np

_REL_TOL = 1e-9  # slopes of one straight piece of T agree to float64 rounding; bends differ far more


def area_windows(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Start and end indices of the windows that torch's adaptive average pooling averages over."""
    i = np.arange(n_out, dtype=np.int64)
    return (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)


class WindowStats(NamedTuple):
    """Exact integer statistics of each area window: sums and pixel counts (h, w); smallest and largest values
    of each window row strip's columns (h, W: :func:`table_means` reduces them to windows when it needs them)."""

    rows: tuple[np.ndarray, np.ndarray]
    cols: tuple[np.ndarray, np.ndarray]
    sums: np.ndarray
    count: np.ndarray
    low: np.ndarray
    high: np.ndarray


def window_stats(rows_of, shape: tuple[int, int], out_shape: tuple[int, int], largest: int) -> WindowStats:
    """One pass over the pixels, one area-window row strip at a time: integer sums, minima and maxima.

    Args:
        rows_of: ``rows_of(start, end)`` → the (end - start, W) integer rows of the image (may reuse a buffer).
        shape: (H, W) of the image.
        out_shape: (h, w) of the resize; at most (H, W).
        largest: an upper bound of the pixels' magnitude (picks the narrowest exact accumulator).

    Returns:
        WindowStats: (h, w) arrays.
    """
    (rs, re), (cs, ce) = area_windows(shape[0], out_shape[0]), area_windows(shape[1], out_shape[1])
    acc = _accumulator(largest * int((re - rs).max()))
    sums, low, high = None, None, None
    for i, (start, end) in enumerate(zip(rs.tolist(), re.tolist())):
        strip = rows_of(start, end)
        if sums is None:
            sums = np.empty((len(rs), shape[1]), dtype=acc if strip.dtype.kind == "u" else np.int64)
            low, high = np.empty((len(rs), shape[1]), dtype=strip.dtype), np.empty((len(rs), shape[1]), strip.dtype)
        np.add.reduce(strip, axis=0, dtype=sums.dtype, out=sums[i])
        np.minimum.reduce(strip, axis=0, out=low[i])
        np.maximum.reduce(strip, axis=0, out=high[i])
    total = _accumulator(largest * int((re - rs).max()) * int((ce - cs).max()))  # exact for a whole window
    total = sums.dtype if sums.dtype.kind == "i" or np.dtype(total).itemsize <= sums.itemsize else total
    sums = np.add.reduceat(sums, _reduceat_index(cs, ce), axis=1, dtype=total)[:, 0::2].astype(np.int64)
    return WindowStats((rs, re), (cs, ce), sums, np.outer(re - rs, ce - cs), low, high)


def table_means(rows_of, stats: WindowStats, table: np.ndarray, vmin: int) -> np.ndarray:
    """The mean of ``table[pixel - vmin]`` over each area window, exact to float64 rounding.

    Windows whose values lie on one straight piece of ``table`` come from their exact sums; the rest (across
    a bend: a window's limits, a non-linear VOI LUT) are gathered through the table, strip by strip.

    Args:
        rows_of: as for :func:`window_stats` (read again only for strips with a window across a bend).
        stats: :func:`window_stats` of the same pixels.
        table: float64 value of each stored value from ``vmin`` to the largest.
        vmin: the smallest pixel value.

    Returns:
        np.ndarray: (h, w) float64.
    """
    count = stats.count.astype(np.float64)
    offset = stats.sums / count - vmin
    piece = _piece_ids(table)
    if piece[0] == piece[-1]:  # one straight piece over every value present: no window needs more
        return _interpolate(table, 0, len(table) - 1, offset)
    (rs, re), (cs, ce) = stats.rows, stats.cols
    index = _reduceat_index(cs, ce)
    lo = np.minimum.reduceat(stats.low, index, axis=1)[:, 0::2].astype(np.int64) - vmin
    hi = np.maximum.reduceat(stats.high, index, axis=1)[:, 0::2].astype(np.int64) - vmin
    out = _interpolate(table, lo, hi, offset)
    straight = piece[lo] == piece[np.maximum(hi - 1, lo)]
    for i in np.flatnonzero(~straight.all(axis=1)):  # windows across a bend: gather their pixels exactly
        bent = np.flatnonzero(~straight[i])
        widths = ce[bent] - cs[bent]
        starts = np.concatenate([[0], np.cumsum(widths)[:-1]])
        columns = np.repeat(cs[bent] - starts, widths) + np.arange(int(widths.sum()))
        pixels = rows_of(int(rs[i]), int(re[i]))[:, columns].astype(np.int64) - vmin
        out[i, bent] = np.add.reduceat(table.take(pixels).sum(axis=0), starts) / count[i, bent]
    return out


def table_area_mean(arr: np.ndarray, table: np.ndarray, vmin: int, out_shape: tuple[int, int]) -> np.ndarray:
    """Area-resize ``table[arr - vmin]`` (an in-memory (H, W) integer image) to ``out_shape`` (<= (H, W))."""
    largest = max(abs(vmin), abs(vmin + len(table) - 1), 1)
    stats = window_stats(lambda start, end: arr[start:end], arr.shape, out_shape, largest)
    return table_means(lambda start, end: arr[start:end], stats, table, vmin)


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


def _accumulator(top: int) -> type:
    """The narrowest unsigned type that holds sums up to ``top`` (``uint16`` sums of 12-bit pixels are fastest)."""
    return np.uint16 if top < 1 << 16 else np.uint32 if top < 1 << 32 else np.uint64


class RowReader:
    """``rows_of`` for :func:`window_stats`: rows of one stored frame read from the file into one reused buffer
    (in cache), instead of the whole frame into memory first. Use as a context manager."""

    def __init__(self, path: str, offset: int, shape: tuple[int, int], dtype, max_rows: int):
        self.offset, self.row_bytes = offset, shape[1] * np.dtype(dtype).itemsize
        self.buffer = np.empty((max_rows, shape[1]), dtype=dtype)
        self.file = open(path, "rb", buffering=0)  # noqa: SIM115 - closed by __exit__

    def __enter__(self) -> RowReader:
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()

    def __call__(self, start: int, end: int) -> np.ndarray:
        rows = self.buffer[: end - start]
        view, done = memoryview(rows).cast("B"), 0
        self.file.seek(self.offset + start * self.row_bytes)
        while done < len(view):
            got = self.file.readinto(view[done:])
            if not got:
                raise OSError("file ended before its pixel data did")
            done += got
        return rows


def stored_frame(ds, path: str, frame: int = 0) -> tuple[int, tuple[int, int], np.dtype] | None:
    """Where one frame of the stored values of an uncompressed little-endian unsigned 8/16-bit single-sample
    DICOM lies in ``path`` (``ds`` read with its pixel data deferred): (byte offset, (rows, columns), dtype);
    None for any other kind of file, or one shorter than its header says. Read with :class:`RowReader`; bits
    above ``BitsStored`` are not masked (callers check the maximum), otherwise it is pydicom's ``pixel_array``."""
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
    return tell + frame * size, (rows, cols), np.dtype(np.uint8 if bits == 8 else "<u2")
