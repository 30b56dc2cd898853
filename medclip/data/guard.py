"""Guards around image decoding: a pixel budget checked before decoding, a minimum size, and PHI-safe messages.

* :class:`ImageLimits` holds the pixel budget (``max_pixels``) and the minimum side (``min_size``);
  defaults come from ``MEDCLIP_MAX_PIXELS`` / ``MEDCLIP_MIN_IMAGE_SIZE`` or the constants below, and the
  data config (``data.max_pixels``, ``data.min_size``) overrides them.
* :func:`check_dicom_budget` compares the DICOM header's Rows × Columns × frames × samples **and** the
  first compressed frame's own header (JPEG SOF, JPEG-LS SOF55, JPEG 2000 SIZ), which may declare
  more than the DICOM header, with the budget; :func:`check_raster_budget` does the same for PNG/JPEG
  files from Pillow's lazily read header. Nothing is decoded before these checks pass.
* :func:`captured_pydicom` collects pydicom's warnings and log records while a file is read and
  re-logs them with every quoted value removed: a damaged header makes pydicom quote element values
  (patient names, IDs, birth dates) in its messages.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import struct
import warnings
from dataclasses import dataclass, field

from ..errors import ConfigError, DataError

logger = logging.getLogger("medclip.data")

DEFAULT_MAX_PIXELS = 50_000_000  # ~7000 x 7000: every real radiograph/mammogram frame fits; 400 MB as float64
DEFAULT_MIN_SIZE = 8
_QUOTED = re.compile(r"""b?['"].*['"]|b?['"].*$""", re.DOTALL)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(float(value))
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not a number; unset it or give an integer") \
            from None


@dataclass(frozen=True)
class ImageLimits:
    """Size limits applied to every image before it is decoded.

    Attributes:
        max_pixels: the pixel budget: declared rows x columns x frames x samples above it are refused.
        min_size: images whose shorter side is below this many pixels are refused (e.g. a 1x1 image).
    """

    max_pixels: int = field(default_factory=lambda: _env_int("MEDCLIP_MAX_PIXELS", DEFAULT_MAX_PIXELS))
    min_size: int = field(default_factory=lambda: _env_int("MEDCLIP_MIN_IMAGE_SIZE", DEFAULT_MIN_SIZE))


def resolve_limits(max_pixels: int | None = None, min_size: int | None = None) -> ImageLimits:
    """Limits from explicit values, else from the environment, else the defaults."""
    base = ImageLimits()
    return ImageLimits(base.max_pixels if max_pixels is None else int(max_pixels),
                       base.min_size if min_size is None else int(min_size))


def check_declared(path: str, dims: tuple[int, ...], what: str, limits: ImageLimits) -> None:
    """Refuse a declared size (height, width[, frames, samples]) over the budget or under the minimum side."""
    height, width = dims[0], dims[1]
    total = 1
    for d in dims:
        total *= max(int(d), 0)
    if total > limits.max_pixels:
        shape = " x ".join(str(int(d)) for d in dims)
        raise DataError(f"{path}: {what} declares {shape} = {total:,} pixels, over the pixel budget of "
                        f"{limits.max_pixels:,} (refused before decoding; raise data.max_pixels or "
                        "MEDCLIP_MAX_PIXELS if the image is genuine)")
    if min(height, width) < limits.min_size:
        raise DataError(f"{path}: image is {int(height)} x {int(width)} pixels, smaller than the minimum side of "
                        f"{limits.min_size} (data.min_size / MEDCLIP_MIN_IMAGE_SIZE)")


def check_dicom_budget(ds, path: str, limits: ImageLimits) -> None:
    """Check the DICOM header's size and the compressed codestream's own header against ``limits``."""
    try:
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
    except (TypeError, ValueError):
        raise DataError(f"{path}: DICOM size tags (Rows, Columns, NumberOfFrames, SamplesPerPixel) "
                        "are not numbers") from None
    if rows <= 0 or cols <= 0 or frames <= 0 or samples <= 0:
        raise DataError(f"{path}: DICOM header declares an empty image (Rows {rows}, Columns {cols}, "
                        f"frames {frames}, samples {samples})")
    check_declared(path, (rows, cols, frames, samples), "DICOM header", limits)
    uid = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if uid is not None and not uid.is_transfer_syntax:
        raise DataError(f"{path}: TransferSyntaxUID {str(uid)[:64]} is not a transfer syntax (damaged file meta)")
    if uid is None or not uid.is_encapsulated or "PixelData" not in ds:
        return
    header = codestream_size(first_fragment(ds.PixelData))
    if header is not None:
        height, width, components = header
        check_declared(path, (height, width, frames, components), "compressed codestream header", limits)


def first_fragment(pixel_data: bytes, limit: int = 1 << 16) -> bytes:
    """Up to ``limit`` bytes of the first data fragment of encapsulated pixel data (after the offset table)."""
    view, offset, items = memoryview(pixel_data), 0, 0
    while offset + 8 <= len(view) and items < 2:
        tag = struct.unpack("<HH", view[offset:offset + 4])
        length = struct.unpack("<I", view[offset + 4:offset + 8])[0]
        if tag != (0xFFFE, 0xE000):
            break
        if items == 1:
            return bytes(view[offset + 8:offset + 8 + min(length, limit)])
        offset, items = offset + 8 + length, items + 1
    return b""


def codestream_size(data: bytes) -> tuple[int, int, int] | None:
    """(height, width, components) declared by a JPEG/JPEG-LS SOF or JPEG 2000 SIZ header; None if neither."""
    from pydicom.pixels.utils import _get_jpg_parameters

    if data[:2] == b"\xff\xd8":
        try:
            info = _get_jpg_parameters(data)
        except (IndexError, struct.error, ValueError):
            info = {}
        if "height" in info:
            return int(info["height"]), int(info["width"]), int(info["components"])
        return None
    start = data.find(b"\xff\x4f\xff\x51")  # SOC + SIZ (raw codestream, or inside a JP2 'jp2c' box)
    if start < 0 or len(data) < start + 42:
        return None
    xsiz, ysiz, xosiz, yosiz = struct.unpack(">IIII", data[start + 8:start + 24])
    (csiz,) = struct.unpack(">H", data[start + 40:start + 42])
    return max(ysiz - yosiz, 0), max(xsiz - xosiz, 0), csiz


def check_raster_budget(im, path: str, limits: ImageLimits) -> None:
    """Check a lazily opened Pillow image's declared size (no pixel has been decoded yet)."""
    width, height = im.size
    bands = len(im.getbands())
    check_declared(path, (height, width, getattr(im, "n_frames", 1) if im.format == "TIFF" else 1, bands),
                   f"{im.format or 'image'} header", limits)


def redact(text: str) -> str:
    """``text`` with everything from its first to its last quote mark replaced by ``<value withheld>``.

    Greedy on purpose: a quoted header value can itself contain quote marks (binary data read as text).
    """
    return _QUOTED.sub("<value withheld>", text)


@contextlib.contextmanager
def captured_pydicom(path: str):
    """Collect pydicom's warnings and log records inside the block; re-log them redacted, once per file."""
    records: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    pyd = logging.getLogger("pydicom")
    handler, propagate = _Collect(level=logging.DEBUG), pyd.propagate
    pyd.addHandler(handler)
    pyd.propagate = False
    caught: list = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        pyd.removeHandler(handler)
        pyd.propagate = propagate
        records += [str(w.message) for w in caught]
        if records:
            unique = list(dict.fromkeys(redact(r.splitlines()[0] if r else "") for r in records))
            logger.warning("%s: %d DICOM header problem(s) reported by pydicom (values withheld): %s",
                           path, len(records), "; ".join(unique[:5]))
