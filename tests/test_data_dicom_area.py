"""The first-pass DICOM fast path: area resize from the stored integers (medclip.data.area) against references.

References: (a) float64 per pixel through pydicom's chain (``_gray_chain`` on every pixel, no table) then
torch's ``adaptive_avg_pool2d`` in float64 — what the area resize means exactly; (b) the full-size path
the transform used before (float32 image, MONAI ``Resized(mode="area")``, pad, quantise).
"""

from __future__ import annotations

import crafted
import numpy as np
import pydicom
import pytest
import torch
from monai.transforms import Resized, SpatialPadd
from pydicom.dataset import Dataset

from medclip.config import VisionConfig
from medclip.data import dicom as dicom_mod
from medclip.data import display
from medclip.data.area import RowReader, area_windows, stored_frame, table_area_mean
from medclip.data.dicom import read_image, read_image_resized
from medclip.data.stored import quantize
from medclip.data.transforms import build_image_transform, to_channels
from medclip.errors import DataError

REAL = ("RG1_UNCR.dcm", "RG3_UNCR.dcm", "MR2_UNCR.dcm")  # windowed; JPEG-LL.dcm (signed, no window) stays full size


def _longest(size):
    def shape_for(h, w):
        scale = size / max(h, w)
        return int(round(h * scale)), int(round(w * scale))
    return shape_for


def _float64_reference(path, shape_for, window_index=0):
    ds = pydicom.dcmread(path)
    arr = ds.pixel_array
    full = display._gray_chain(ds, arr, str(ds.PhotometricInterpretation).upper(), window_index)
    pooled = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(full)[None, None], shape_for(*arr.shape))
    return pooled[0, 0].numpy()


def _old_first_pass(path, size, dtype=np.uint16):
    """The transform's deterministic half as it was: full-size float32 image, MONAI area resize, pad, quantise."""
    full = to_channels(read_image(path), 1)
    resized = Resized("image", spatial_size=_longest(size)(*full.shape[-2:]), mode="area")({"image": full})
    padded = SpatialPadd("image", spatial_size=(size, size))(resized)["image"]
    return quantize(np.asarray(padded, dtype=np.float32), dtype)


def _write(path, arr, bits, mono="MONOCHROME2", window=None, voi_lut=None, extra=None):
    """A plain little-endian DICOM of ``arr`` ((H, W) or (frames, H, W)) through the tests' one writer."""
    tags = dict(Modality="DX", PhotometricInterpretation=mono, BitsAllocated=8 if arr.dtype == np.uint8 else 16,
                BitsStored=bits, HighBit=bits - 1, **(extra or {}))
    if arr.ndim == 3:
        tags["NumberOfFrames"] = arr.shape[0]
    if window is not None:
        tags["WindowCenter"], tags["WindowWidth"] = window
    if voi_lut is not None:
        item = Dataset()
        item.LUTDescriptor = [len(voi_lut), 0, 16]
        item.add_new("LUTData", "OW", np.asarray(voi_lut, dtype="<u2").tobytes())
        tags["VOILUTSequence"] = [item]
    return str(crafted.dicom(path, arr.astype(arr.dtype.newbyteorder("<")), **tags))


def _radiograph(shape, top, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    img = yy / shape[0] * 0.6 + xx / shape[1] * 0.3 + rng.normal(0, 0.05, shape)
    return np.clip(img, 0, 1) * top


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """Large enough (> DEFER_BYTES) to take the read-from-file path; each kind of display chain once."""
    tmp = tmp_path_factory.mktemp("area")
    shape = (1100, 900)
    r12 = _radiograph(shape, 4095).astype(np.uint16)
    r16 = _radiograph(shape, 65535, seed=1).astype(np.uint16)
    curve = np.round(65535 * np.sqrt(np.linspace(0, 1, 4096))).astype(np.uint16)  # a non-linear VOI LUT
    return {
        "12-bit full window": _write(tmp / "a.dcm", r12, 12, window=(2048, 4096)),
        "12-bit MONOCHROME1 narrow window": _write(tmp / "b.dcm", r12, 12, "MONOCHROME1", window=(1500, 800)),
        "16-bit narrow window + rescale": _write(tmp / "c.dcm", r16, 16, window=(20000, 9000),
                                                 extra={"RescaleSlope": 0.5, "RescaleIntercept": -100}),
        "12-bit VOI LUT sequence": _write(tmp / "d.dcm", r12, 12, voi_lut=curve),
        "12-bit no window (percentiles)": _write(tmp / "e.dcm", r12, 12),
        "8-bit window": _write(tmp / "f.dcm", _radiograph((1300, 1000), 255).astype(np.uint8), 8, window=(100, 120)),
    }


def test_area_windows_are_torchs():
    for n_in, n_out in ((3056, 224), (2544, 186), (100, 7), (37, 37), (1955, 224)):
        x = torch.arange(n_in, dtype=torch.float64)[None, None, :, None]
        pooled = torch.nn.functional.adaptive_avg_pool2d(x, (n_out, 1))[0, 0, :, 0].numpy()
        start, end = area_windows(n_in, n_out)
        assert np.array_equal((start + end - 1) / 2, pooled)  # the mean of a run of integers is its midpoint


@pytest.mark.parametrize("seed", range(6))
def test_table_area_mean_equals_gather_then_pool(seed):
    rng = np.random.default_rng(seed)
    rows, cols = int(rng.integers(40, 300)), int(rng.integers(40, 300))
    out = (int(rng.integers(1, rows + 1)), int(rng.integers(1, cols + 1)))
    arr = np.clip(_radiograph((rows, cols), 4095, seed) + rng.integers(0, 3, (rows, cols)), 0, 4095).astype(np.uint16)
    vmin, vmax = int(arr.min()), int(arr.max())
    values = np.arange(vmin, vmax + 1, dtype=np.float64)
    lo, hi = np.quantile(values, [0.3, 0.7])
    tables = [values / 4095,  # one straight piece
              np.clip((values - lo) / (hi - lo), 0, 1),  # clipped window: bends at lo and hi
              np.sqrt(values / 4095)]  # bends everywhere
    for table in tables:
        expected = torch.nn.functional.adaptive_avg_pool2d(
            torch.from_numpy(table[arr.astype(np.int64) - vmin])[None, None], out)[0, 0].numpy()
        assert np.abs(table_area_mean(arr, table, vmin, out) - expected).max() < 1e-12


@pytest.mark.parametrize("name", REAL)
@pytest.mark.parametrize("size", [224, 64])
def test_real_dicom_area_equals_float64_reference(shared_data, name, size):
    path = str(shared_data / "dicom" / name)
    small, resized = read_image_resized(path, _longest(size))
    assert resized and small.dtype == np.float32
    # float32 output of a float64 computation: rounding only (the old float32 path was ~1e-6 off)
    assert np.abs(small - _float64_reference(path, _longest(size))).max() < 1e-7


def test_synthetic_chains_equal_float64_reference(synthetic):
    for kind, path in synthetic.items():
        small, resized = read_image_resized(path, _longest(160))
        if kind.endswith("(percentiles)"):  # percentiles need every pixel: the full-size path, not resized
            assert not resized and small.shape == (1100, 900), kind
            continue
        assert resized, kind
        assert np.abs(small - _float64_reference(path, _longest(160))).max() < 1e-7, kind


def test_first_pass_within_one_step_of_the_old_full_size_path(synthetic, shared_data):
    """The transform's stored output vs the old float32 path: equal but for that path's float32 rounding
    (<= 2 uint16 steps, i.e. 3e-5 of the [0, 1] range, on a small share of pixels; 8-bit: <= 1 step)."""
    paths = [*synthetic.values(), *(str(shared_data / "dicom" / n) for n in (*REAL, "JPEG-LL.dcm"))]
    tf = build_image_transform(VisionConfig(image_size=160, in_chans=1))
    for path in paths:
        stored = tf.prepare_stored(path)
        old = _old_first_pass(path, 160, stored.dtype)
        diff = np.abs(stored[0].astype(np.int64) - old[0].astype(np.int64))
        assert diff.max() <= (1 if stored.dtype == np.uint8 else 2), path
        assert (diff > 0).mean() < 0.05, path
        if path.endswith(("e.dcm", "JPEG-LL.dcm")):  # no window: the full-size path itself, bit for bit
            assert diff.max() == 0


def test_stored_frame_read_by_rows_equals_pixel_array(synthetic, shared_data, tmp_path):
    frames = np.stack([_radiograph((700, 800), 4095, seed) for seed in range(3)]).astype(np.uint16)
    multi = _write(tmp_path / "multi.dcm", frames, 12, window=(2048, 4096))
    cases = [(p, 0) for p in synthetic.values()] + [(multi, 2)] + [(str(shared_data / "dicom" / "RG1_UNCR.dcm"), 0)]
    for path, frame in cases:
        offset, shape, dtype = stored_frame(pydicom.dcmread(path, defer_size=1 << 20), path, frame)
        with RowReader(path, offset, shape, dtype, shape[0]) as rows_of:
            stored = np.vstack([rows_of(start, min(start + 97, shape[0])).copy() for start in range(0, shape[0], 97)])
        full = pydicom.dcmread(path)
        assert np.array_equal(stored, dicom_mod._decode_frame(full, path, frame)), path
    for name in ("RG1_J2KR.dcm", "JPEG-LL.dcm"):  # compressed / signed: pydicom decodes them
        path = str(shared_data / "dicom" / name)
        assert stored_frame(pydicom.dcmread(path, defer_size=1 << 20), path, 0) is None


def test_bits_above_bits_stored_are_masked_like_pydicom(tmp_path):
    arr = _radiograph((1100, 900), 4095).astype(np.uint16)
    arr[::7, ::5] |= 0x3000  # junk above bit 11, which pydicom's pixel_array masks off
    path = _write(tmp_path / "junk.dcm", arr, 12, window=(2048, 4096))
    small, _ = read_image_resized(path, _longest(128))
    assert np.abs(small - _float64_reference(path, _longest(128))).max() < 1e-6


def test_truncated_large_dicom_is_one_line_error(synthetic, tmp_path):
    data = open(synthetic["12-bit full window"], "rb").read()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as err:
        read_image_resized(str(cut), _longest(128))
    assert str(cut) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("shape", [(224, 196), (37, 50), (140, 126), (300, 260)])
def test_area_resize_equals_monai_resized(shape):
    from medclip.data.transforms import area_resize

    image = np.random.default_rng(0).random((1, 140, 126), dtype=np.float32)
    expected = np.asarray(Resized("image", spatial_size=shape, mode="area")({"image": image})["image"])
    assert np.array_equal(area_resize(image, shape), expected)
