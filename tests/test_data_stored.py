"""Caches store uint8/uint16 (the source's bit depth), the first pass is quantised alike, and cache keys use
the path relative to the manifest's folder (another mount point reuses the cache)."""

from __future__ import annotations

import shutil

import corpus_replicas as R
import numpy as np
import pytest

from medclip.config import VisionConfig
from medclip.data.stored import dequantize, quantize
from medclip.data.transforms import build_image_transform


@pytest.mark.parametrize("kind,dtype", [("png8", np.uint8), ("png16", np.uint16), ("dicom12", np.uint16)])
def test_cache_equals_first_pass_and_keeps_the_source_bits(tmp_path, kind, dtype):
    path = tmp_path / ("x.dcm" if kind == "dicom12" else "x.png")
    if kind == "dicom12":
        R.write_dicom(path, 0, "PA")
    else:
        R.write_image(path, 0, bits=16 if kind == "png16" else 8)
    nocache = build_image_transform(VisionConfig(image_size=32, in_chans=1)).prepare(str(path))
    cached_tf = build_image_transform(VisionConfig(image_size=32, in_chans=1), cache_dir=str(tmp_path / "c"))
    first, again = cached_tf.prepare(str(path)), cached_tf.prepare(str(path))
    stored = np.load(cached_tf.cache_path(str(path)))
    assert stored.dtype == dtype and stored.shape == (1, 32, 32)
    np.testing.assert_array_equal(first, nocache)  # uncached path quantised too
    np.testing.assert_array_equal(again, first)  # cached == first pass, bit for bit
    np.testing.assert_array_equal(dequantize(stored), first)
    top = np.iinfo(dtype).max
    np.testing.assert_array_equal(np.round(first * top), stored)  # on the grid of the stored type


def test_cache_file_of_a_224_uint8_image_is_under_50_kib(tmp_path):
    R.write_image(tmp_path / "x.png", 1)
    tf = build_image_transform(VisionConfig(image_size=224, in_chans=1), cache_dir=str(tmp_path / "c"))
    tf.prepare(str(tmp_path / "x.png"))
    size = (tmp_path / "c").rglob("*.npy").__next__().stat().st_size
    assert size <= 50 * 1024 and size >= 224 * 224


def test_cache_key_is_relative_to_the_manifest_folder(tmp_path):
    R.write_image(tmp_path / "a" / "img" / "x.png", 2)
    vision = VisionConfig(image_size=32, in_chans=1)
    first = build_image_transform(vision, cache_dir=str(tmp_path / "c")).set_cache_root(tmp_path / "a")
    first.prepare(str(tmp_path / "a" / "img" / "x.png"))
    shutil.copytree(tmp_path / "a", tmp_path / "mnt" / "b", copy_function=shutil.copy2)  # another mount, same mtime
    other = build_image_transform(vision, cache_dir=str(tmp_path / "c")).set_cache_root(tmp_path / "mnt" / "b")
    moved = str(tmp_path / "mnt" / "b" / "img" / "x.png")
    assert other.cache_path(moved) == first.cache_path(str(tmp_path / "a" / "img" / "x.png"))
    absolute = build_image_transform(vision, cache_dir=str(tmp_path / "c"))
    assert absolute.cache_path(moved) != other.cache_path(moved)


def test_quantize_round_trip():
    x = np.linspace(0, 1, 1001, dtype=np.float32)
    for dtype in (np.uint8, np.uint16):
        q = quantize(x, dtype)
        assert np.abs(dequantize(q) - x).max() <= 0.5 / np.iinfo(dtype).max + 1e-7
        np.testing.assert_array_equal(quantize(dequantize(q), dtype), q)


@pytest.mark.parametrize("photometric,signed", [("MONOCHROME2", False), ("MONOCHROME1", True)])
def test_large_dicom_lookup_table_path_equals_the_per_pixel_chain(tmp_path, photometric, signed):
    import pydicom

    from medclip.data import display

    path = tmp_path / "big.dcm"
    R.write_dicom(path, 3, "PA")
    ds = pydicom.dcmread(path)
    rng = np.random.default_rng(0)
    arr = rng.integers(-900 if signed else 0, 4000, (300, 260)).astype(np.int16 if signed else np.uint16)
    ds.WindowCenter, ds.WindowWidth, ds.RescaleSlope, ds.RescaleIntercept = [1500, 600], [2500, 400], 2, -7
    for index in (0, 1):
        fast = display._grayscale_to_unit(ds, arr, photometric, index)
        slow = display._gray_chain(ds, arr, photometric, index)
        assert arr.size > 1 << 16 and fast.shape == slow.shape
        np.testing.assert_array_equal(fast.astype(np.float32), slow.astype(np.float32))
