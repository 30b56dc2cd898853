"""Decoding DICOM, PNG and JPEG files to float images in [0, 1], with one-line errors for bad files.

DICOM goes through pydicom's own display pipeline, in the order the standard defines it:
decode one frame (any transfer syntax pydicom has a plugin for) → palette colour LUT / colour space
→ Modality LUT (rescale slope/intercept or LUT) → VOI LUT or window centre/width (the
``window_index``-th; robust percentiles when the file has none) → invert MONOCHROME1 so that dense
tissue is bright. PNG/JPEG files are scaled by their bit depth (8 or 16 bit).

Nothing here ever logs or returns patient-identifying header values; :func:`phi_tags_present` reports
only which PHI tags a file carries.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import DataError
from .area import RowReader, stored_frame
from .display import _area_resized, _grayscale_to_unit
from .guard import (
    ImageLimits,
    captured_pydicom,
    check_dicom_budget,
    check_raster_budget,
    redact,
    resolve_limits,
)

DICOM_SUFFIXES = {".dcm", ".dicom", ".dic", ""}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
# Header tags that identify a person (DICOM PS3.15 basic profile, the common ones). Values are never read out.
PHI_TAGS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientAddress", "PatientTelephoneNumbers",
    "OtherPatientIDs", "OtherPatientNames", "PatientMotherBirthName", "MedicalRecordLocator",
    "AccessionNumber", "InstitutionName", "InstitutionAddress", "ReferringPhysicianName",
    "PerformingPhysicianName", "OperatorsName", "InstitutionalDepartmentName", "StationName",
)
DICOM_EXTRA_HINT = "pip install 'medclip[dicom]' (pylibjpeg + pylibjpeg-libjpeg/openjpeg)"
DEFER_BYTES = 1 << 20  # read_image_resized leaves larger pixel data in the file until it knows how to read it


def is_dicom(path: str | os.PathLike) -> bool:
    """True when the file has the DICM preamble or a DICOM-like suffix (``.dcm``, none)."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM" or Path(path).suffix.lower() in DICOM_SUFFIXES


def read_image(path: str | os.PathLike, window_index: int = 0, frame: int = 0,
               limits: ImageLimits | None = None) -> np.ndarray:
    """Decode any supported image file to float32 in [0, 1], shape (H, W) or (H, W, 3).

    The declared size is checked against ``limits`` (pixel budget, minimum side) before any pixel is
    decoded. Any failure, whatever the decoder raised, becomes one :class:`DataError`.

    Args:
        path: a DICOM, PNG or JPEG file.
        window_index: DICOM only: which stored window / VOI LUT to apply.
        frame: DICOM only: which frame of a multi-frame file.
        limits: pixel budget and minimum side (default: :func:`~medclip.data.guard.resolve_limits`).

    Raises:
        DataError: one line naming the file and what is wrong with it (missing, empty, not an image,
            truncated, over the pixel budget, compressed without a decoder, NaN pixels, ...).
    """
    return _read(str(path), window_index, frame, limits or resolve_limits(), None)[0]


def read_image_resized(path: str | os.PathLike, shape_for: Callable[[int, int], tuple[int, int]],
                       window_index: int = 0, frame: int = 0,
                       limits: ImageLimits | None = None) -> tuple[np.ndarray, bool]:
    """:func:`read_image`, with a grayscale DICOM that has a stored window already area-resized.

    Such a file comes back as ``torch.nn.functional.interpolate(read_image(path), shape_for(H, W),
    mode="area")`` computed from the stored integers without the full-size float image (exact up to
    float64 rounding, see :mod:`medclip.data.area`). Any other file comes back full size.

    Args:
        path: a DICOM, PNG or JPEG file.
        shape_for: (H, W) of the file → (h, w) of the area resize.
        window_index: DICOM only: which stored window / VOI LUT to apply.
        frame: DICOM only: which frame of a multi-frame file.
        limits: pixel budget and minimum side.

    Returns:
        tuple: the float image in [0, 1] and whether it is already resized to ``shape_for(H, W)``.

    Raises:
        DataError: as :func:`read_image`.
    """
    return _read(str(path), window_index, frame, limits or resolve_limits(), shape_for)


def _read(path: str, window_index: int, frame: int, limits: ImageLimits, shape_for) -> tuple[np.ndarray, bool]:
    if not os.path.exists(path):
        raise DataError(f"{path}: file not found")
    if os.path.isdir(path):
        raise DataError(f"{path}: is a folder, not an image file")
    if os.path.getsize(path) == 0:
        raise DataError(f"{path}: empty file (0 bytes)")
    try:
        if is_dicom(path):
            with captured_pydicom(path):
                arr, resized = _read_dicom(path, window_index, frame, limits, shape_for)
        else:
            arr, resized = read_raster(path, limits), False
    except DataError:
        raise
    except MemoryError:
        raise DataError(f"{path}: out of memory while decoding (lower data.max_pixels)") from None
    except Exception as exc:  # any decoder failure is this file's problem, never the run's
        raise DataError(f"{path}: cannot decode ({type(exc).__name__}: {_first_line(exc)})") from None
    if not np.isfinite(arr).all():
        raise DataError(f"{path}: image contains NaN or infinite pixel values")
    if not resized:
        _check_min_side(path, arr.shape[:2], limits)
    return arr.astype(np.float32, copy=False), resized


def _check_min_side(path: str, shape: tuple[int, ...], limits: ImageLimits) -> None:
    if min(shape) < limits.min_size:
        raise DataError(f"{path}: image is {shape[0]} x {shape[1]} pixels, smaller than the minimum side "
                        f"of {limits.min_size} (data.min_size / MEDCLIP_MIN_IMAGE_SIZE)")


def read_raster(path: str, limits: ImageLimits | None = None) -> np.ndarray:
    """PNG/JPEG/TIFF via Pillow → float in [0, 1] by bit depth (8-bit /255, 16-bit /65535).

    The header's size is checked against ``limits`` before the pixels are decoded.
    """
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own budget check follows
            with Image.open(path) as im:
                check_raster_budget(im, path, limits or resolve_limits())
                im.load()
                arr = _raster_to_float(im)
    except DataError:
        raise
    except Image.DecompressionBombError as exc:  # Pillow refuses > 2x its limit inside open(): same verdict
        raise DataError(f"{path}: image header declares more pixels than the pixel budget, refused before "
                        f"decoding (Pillow: {_first_line(exc)})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: not a readable image ({_first_line(exc)})") from None
    return np.clip(arr, 0.0, 1.0) if np.isfinite(arr).all() else arr


def _raster_to_float(im) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        return np.asarray(im, dtype=np.float64) / 65535.0
    if im.mode == "F":
        return np.asarray(im, dtype=np.float64)
    if im.mode in ("L", "1"):
        return np.asarray(im.convert("L"), dtype=np.float64) / 255.0
    return np.asarray(im.convert("RGB"), dtype=np.float64) / 255.0


def _read_dicom(path: str, window_index: int, frame: int, limits: ImageLimits,
                shape_for) -> tuple[np.ndarray, bool]:
    deferred = shape_for is not None and os.path.getsize(path) > DEFER_BYTES
    ds = _open_dicom(path, limits, deferred)
    if deferred:  # large plain file: pixels read straight into the area sums, else read again in full
        small = _stored_area(ds, path, frame, window_index, shape_for, limits)
        if small is not None:
            return small, True
        ds = _open_dicom(path, limits, False)
    arr = _decode_frame(ds, path, frame)
    try:
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
        if photometric == "PALETTE COLOR" or arr.ndim == 3:
            return _colour_to_unit(ds, arr, photometric, path), False
        if shape_for is not None:
            _check_min_side(path, arr.shape, limits)
            small = _area_resized(ds, lambda start, end: arr[start:end], arr.shape, arr.dtype, photometric,
                                  window_index, shape_for)
            if small is not None:
                return small, True
        return _grayscale_to_unit(ds, arr, photometric, window_index), False
    except DataError:
        raise
    except Exception as exc:  # e.g. RescaleSlope='' (TypeError), RescaleIntercept='abc' (UFuncTypeError)
        raise DataError(f"{path}: display tags (rescale, window, LUT) cannot be applied "
                        f"({type(exc).__name__}: {_first_line(exc)})") from None


def _open_dicom(path: str, limits: ImageLimits, deferred: bool):
    """The dataset (pixel data left in the file when ``deferred``), its size checked before any pixel is decoded."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, defer_size=DEFER_BYTES if deferred else None)
    except InvalidDicomError:
        raise DataError(f"{path}: not a DICOM file (no DICM preamble); convert it or fix the path") from None
    except Exception as exc:  # pydicom raises many types on damaged headers
        raise DataError(f"{path}: unreadable DICOM header ({type(exc).__name__}: {_first_line(exc)})") from None
    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise DataError(f"{path}: DICOM has no pixel data (no PixelData element: truncated, or not an image object)")
    check_dicom_budget(ds, path, limits)
    return ds


def _stored_area(ds, path: str, frame: int, window_index: int, shape_for, limits: ImageLimits) -> np.ndarray | None:
    """The area-resized image of a plain (uncompressed, unsigned, grayscale) DICOM, its rows read from the file
    strip by strip (:class:`~medclip.data.area.RowReader`); None for any other file, or one with bits set
    above ``BitsStored`` or tags the chain rejects (the full path decodes it and reports what is wrong)."""
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    where = stored_frame(ds, path, frame) if photometric in ("MONOCHROME1", "MONOCHROME2") else None
    if where is None:
        return None
    offset, shape, dtype = where
    _check_min_side(path, shape, limits)
    try:
        strip_rows = min(shape[0], -(-shape[0] // max(1, shape_for(*shape)[0])) + 1)  # the tallest area window
        with RowReader(path, offset, shape, dtype, strip_rows) as rows_of:
            return _area_resized(ds, rows_of, shape, dtype, photometric, window_index, shape_for, int(ds.BitsStored))
    except Exception:  # noqa: BLE001 - bad display tags, a file cut short: the full path gives the one-line error
        return None


def _decode_frame(ds, path: str, frame: int) -> np.ndarray:
    from pydicom.pixels import pixel_array

    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frame >= n_frames:
        raise DataError(f"{path}: frame {frame} requested but the file has {n_frames} frame(s) (set data.frame)")
    _require_decoder(ds, path)
    try:
        return pixel_array(ds, index=frame if n_frames > 1 else None)
    except MemoryError:
        raise
    except Exception as exc:  # decoders raise many types on corrupt data; the syntax has a decoder (checked)
        raise DataError(f"{path}: pixel data cannot be decoded, file truncated or corrupt "
                        f"({type(exc).__name__}: {_first_line(exc)})") from None


def _require_decoder(ds, path: str) -> None:
    """Raise a one-line error naming the ``medclip[dicom]`` extra when no plugin can decode this syntax."""
    from pydicom.pixels import get_decoder

    uid = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if uid is None or not uid.is_transfer_syntax or not uid.is_compressed:
        return
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        raise DataError(f"{path}: transfer syntax {uid.name} is not supported by pydicom") from None
    if not decoder.is_available:
        raise DataError(f"{path}: {uid.name} DICOM needs a decoder that is not installed; {DICOM_EXTRA_HINT}")


def _colour_to_unit(ds, arr: np.ndarray, photometric: str, path: str) -> np.ndarray:
    from pydicom.pixels import apply_color_lut

    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
    # YBR_FULL / YBR_FULL_422 were converted to RGB by pydicom's pixel_array (as_rgb=True, convert_color_space)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise DataError(f"{path}: unsupported colour layout {arr.shape} ({photometric})")
    if arr.dtype == np.uint8:
        scale = 255.0
    elif photometric == "PALETTE COLOR":
        scale = 65535.0
    else:
        scale = float(2 ** int(ds.get("BitsStored", 8 * arr.dtype.itemsize)) - 1)
    return np.clip(arr.astype(np.float64) / scale, 0.0, 1.0)


def phi_tags_present(path: str | os.PathLike) -> list[str]:
    """Names of the PHI tags a DICOM file carries (never their values); [] for non-DICOM or unreadable files.

    Args:
        path: the image file.

    Returns:
        list[str]: the tags of :data:`PHI_TAGS` present with a non-empty value, in that order.
    """
    import pydicom

    with quiet_pydicom():
        try:
            ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=list(PHI_TAGS))
            return [tag for tag in PHI_TAGS if tag in ds and str(ds[tag].value or "").strip()]
        except Exception:  # a damaged file is reported by read_image, not here
            return []


@contextlib.contextmanager
def quiet_pydicom():
    """Silence pydicom's warnings and log records inside the block: for header-only reads (a tag or two)
    whose problems :func:`read_image` reports, redacted. A damaged header makes pydicom quote element
    values, patient names included, in those messages."""
    with warnings.catch_warnings(), _silenced("pydicom"):
        warnings.simplefilter("ignore")
        yield


@contextlib.contextmanager
def _silenced(name: str):
    """Swallow the logger's records (a handler that drops them, no propagation). Not ``setLevel``: that clears
    every logger's cache, ~1 ms per call with torch and MONAI loaded, paid per image."""
    log = logging.getLogger(name)
    sink, propagate = logging.NullHandler(), log.propagate
    log.addHandler(sink)
    log.propagate = False
    try:
        yield
    finally:
        log.removeHandler(sink)
        log.propagate = propagate


def _first_line(exc: BaseException) -> str:
    """First line of a decoder's error, with quoted values withheld (they can be header values, i.e. PHI)."""
    text = str(exc).strip().splitlines()
    return redact(text[0] if text else type(exc).__name__)[:200]
