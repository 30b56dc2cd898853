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
from .area import stored_frame, table_area_mean
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
PERCENTILES = (0.5, 99.5)
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
            small = _area_resized(ds, arr, photometric, window_index, shape_for)
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
    """The area-resized image of a plain (uncompressed, unsigned, grayscale) DICOM read straight from its
    stored values (:func:`~medclip.data.area.stored_frame`); None for any other file, or one with bits set
    above ``BitsStored`` or tags the chain rejects (the full path decodes it and reports what is wrong)."""
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    arr = stored_frame(ds, path, frame) if photometric in ("MONOCHROME1", "MONOCHROME2") else None
    if arr is None:
        return None
    _check_min_side(path, arr.shape, limits)
    try:
        return _area_resized(ds, arr, photometric, window_index, shape_for, int(ds.BitsStored))
    except Exception:  # noqa: BLE001 - bad display tags: the full path gives the file's one-line error
        return None


def _area_resized(ds, arr: np.ndarray, photometric: str, window_index: int, shape_for,
                  bits: int | None = None) -> np.ndarray | None:
    """The grayscale chain area-resized to ``shape_for(H, W)`` (:func:`~medclip.data.area.table_area_mean`);
    None where that does not apply (float pixels, no stored window: percentiles need every pixel, upsampling,
    a value of ``bits`` or more bits)."""
    shape = shape_for(*arr.shape)
    if arr.dtype.kind not in "ui" or not _has_voi(ds) or shape[0] > arr.shape[0] or shape[1] > arr.shape[1]:
        return None
    vmin, vmax = int(arr.min()), int(arr.max())
    if vmax - vmin >= 1 << 20 or (bits is not None and vmax >= 1 << bits):
        return None
    table = _gray_chain(ds, np.arange(vmin, vmax + 1).astype(arr.dtype), photometric, window_index)
    if table.dtype.kind != "f" or not np.isfinite(table).all():
        return None  # the full-size path reports it
    return table_area_mean(arr, table.astype(np.float64, copy=False), vmin, shape)


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
    log = logging.getLogger(name)
    level, propagate = log.level, log.propagate
    log.setLevel(logging.CRITICAL + 1)
    log.propagate = False
    try:
        yield
    finally:
        log.setLevel(level)
        log.propagate = propagate


def _first_line(exc: BaseException) -> str:
    """First line of a decoder's error, with quoted values withheld (they can be header values, i.e. PHI)."""
    text = str(exc).strip().splitlines()
    return redact(text[0] if text else type(exc).__name__)[:200]
