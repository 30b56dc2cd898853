"""Real DICOM files decode through pydicom's display pipeline (../shared/data/dicom)."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import torch

import medclip
from medclip.data import build_image_transform, load_image, phi_tags_present
from medclip.errors import DataError


@pytest.fixture(scope="module")
def dicom_dir(shared_data):
    return shared_data / "dicom"


@pytest.fixture(scope="module")
def rg1(dicom_dir):
    return load_image(dicom_dir / "RG1_UNCR.dcm")


def test_monochrome1_chest_lungs_dark_spine_bright(rg1, dicom_dir):
    assert pydicom.dcmread(dicom_dir / "RG1_UNCR.dcm", stop_before_pixels=True).PhotometricInterpretation == \
        "MONOCHROME1"
    h, w = rg1.shape
    assert rg1.dtype == np.float32 and 0.0 <= rg1.min() and rg1.max() <= 1.0
    rows = slice(h // 4, h // 2)
    right_lung, left_lung = rg1[rows, w // 5: w // 3].mean(), rg1[rows, 2 * w // 3: 4 * w // 5].mean()
    spine = rg1[rows, w // 2 - w // 40: w // 2 + w // 40].mean()
    assert spine > right_lung + 0.15 and spine > left_lung + 0.15  # inverted correctly: air dark, bone bright


@pytest.mark.slow
def test_jpeg2000_equals_uncompressed(rg1, dicom_dir):
    j2k = load_image(dicom_dir / "RG1_J2KR.dcm")
    np.testing.assert_array_equal(j2k, rg1)


def test_mr_rescale_slope_applied(dicom_dir):
    from pydicom.pixels import apply_modality_lut

    ds = pydicom.dcmread(dicom_dir / "MR2_UNCR.dcm")
    assert float(ds.RescaleSlope) != 1.0
    raw = ds.pixel_array.astype(np.float64)
    rescaled = apply_modality_lut(ds.pixel_array, ds)
    np.testing.assert_allclose(rescaled, raw * float(ds.RescaleSlope) + float(ds.RescaleIntercept))
    # our image is the stored window applied to the RESCALED values (not the raw ones)
    center, width = float(ds.WindowCenter), float(ds.WindowWidth)
    expected = np.clip((rescaled - (center - 0.5)) / (width - 1) + 0.5, 0, 1)
    np.testing.assert_allclose(load_image(dicom_dir / "MR2_UNCR.dcm"), expected, atol=1e-5)


def test_window_index_selects_another_window(dicom_dir, tmp_path):
    ds = pydicom.dcmread(dicom_dir / "MR2_UNCR.dcm")
    center, width = float(ds.WindowCenter), float(ds.WindowWidth)
    ds.WindowCenter, ds.WindowWidth = [center, center / 4], [width, width / 4]
    ds.save_as(tmp_path / "two_windows.dcm")
    first, second = (load_image(tmp_path / "two_windows.dcm", window_index=i) for i in (0, 1))
    np.testing.assert_allclose(first, load_image(dicom_dir / "MR2_UNCR.dcm"), atol=1e-6)
    assert (second == 1.0).mean() > (first == 1.0).mean() + 0.05  # the narrow window saturates more pixels


def test_no_window_uses_percentiles(dicom_dir, tmp_path):
    ds = pydicom.dcmread(dicom_dir / "RG3_UNCR.dcm")
    del ds.WindowCenter, ds.WindowWidth
    ds.save_as(tmp_path / "nowindow.dcm")
    img = load_image(tmp_path / "nowindow.dcm")
    raw = ds.pixel_array.astype(np.float64)
    lo, hi = np.percentile(raw, [0.5, 99.5])
    np.testing.assert_allclose(img, 1 - np.clip((raw - lo) / (hi - lo), 0, 1), atol=1e-5)  # MONOCHROME1: inverted


def test_multiframe_rgb_frame_and_channels(dicom_dir):
    path = dicom_dir / "SC_rgb_16bit_2frame.dcm"
    frames = pydicom.dcmread(path).pixel_array.astype(np.float64) / 65535
    for frame in (0, 1):
        img = load_image(path, frame=frame)
        assert img.shape == (100, 100, 3)
        np.testing.assert_allclose(img, frames[frame], atol=1e-6)
    vc = medclip.get_model_config("tiny-vit").vision
    gray = build_image_transform(vc, frame=1)(path)
    assert gray.shape == (1, 64, 64)
    rgb_cfg = medclip.config.VisionConfig(image_size=32, in_chans=3)
    rgb = build_image_transform(rgb_cfg, frame=1).prepare(path)
    assert rgb.shape == (3, 32, 32)
    np.testing.assert_allclose(rgb.mean(axis=(1, 2)), frames[1].mean(axis=(0, 1)), atol=0.02)
    luma = build_image_transform(vc, frame=1).prepare(path)[0]
    np.testing.assert_allclose(luma.mean(), (frames[1] @ [0.299, 0.587, 0.114]).mean(), atol=0.02)
    with pytest.raises(DataError, match="frame 2 requested but the file has 2 frame"):
        load_image(path, frame=2)


def test_palette_color_rle(dicom_dir):
    from pydicom.pixels import apply_color_lut

    ds = pydicom.dcmread(dicom_dir / "OBXXXX1A_rle.dcm")
    img = load_image(dicom_dir / "OBXXXX1A_rle.dcm")
    np.testing.assert_allclose(img, apply_color_lut(ds.pixel_array, ds) / 65535.0, atol=1e-6)


def test_jpeg_lossless_signed_decodes(dicom_dir):
    ds = pydicom.dcmread(dicom_dir / "JPEG-LL.dcm")
    assert ds.PixelRepresentation == 1 and ds.BitsStored == 16
    img = load_image(dicom_dir / "JPEG-LL.dcm")
    raw = ds.pixel_array.astype(np.float64)
    lo, hi = np.percentile(raw, [0.5, 99.5])
    np.testing.assert_allclose(img, np.clip((raw - lo) / (hi - lo), 0, 1), atol=1e-5)


def test_jpeg_lossless_without_decoder_names_the_extra(dicom_dir, monkeypatch):
    from pydicom.pixels import get_decoder

    uid = pydicom.dcmread(dicom_dir / "JPEG-LL.dcm", stop_before_pixels=True).file_meta.TransferSyntaxUID
    decoder = get_decoder(uid)
    monkeypatch.setattr(decoder, "_available", {})  # as if pylibjpeg-libjpeg (and GDCM) were not installed
    monkeypatch.setattr(decoder, "_unavailable", {"pylibjpeg": ("pylibjpeg>=2.0", "pylibjpeg-libjpeg>=2.1")})
    with pytest.raises(DataError) as info:
        load_image(dicom_dir / "JPEG-LL.dcm")
    message = str(info.value)
    assert "\n" not in message and "JPEG-LL.dcm" in message and "medclip[dicom]" in message


def test_phi_tags_reported_by_name_only(dicom_dir):
    tags = phi_tags_present(dicom_dir / "RG1_UNCR.dcm")
    assert {"PatientName", "PatientID"} <= set(tags)
    ds = pydicom.dcmread(dicom_dir / "RG1_UNCR.dcm", stop_before_pixels=True)
    assert str(ds.PatientName) not in " ".join(tags)


def test_transform_pad_crop_cache_and_augmentation(dicom_dir, tmp_path):
    vc = medclip.get_model_config("tiny-vit").vision
    path = dicom_dir / "JPEG-LL.dcm"  # 1024 x 256: tall and narrow
    pad = build_image_transform(vc, resize="pad").prepare(path)[0]
    assert pad.shape == (64, 64)
    assert (pad[:, :20] == 0).all() and (pad[:, -20:] == 0).all() and pad[:, 28:36].mean() > 0  # padded sides
    crop = build_image_transform(vc, resize="crop").prepare(path)[0]
    assert crop.shape == (64, 64) and (crop[:, :4] > 0).any()  # no padding when cropping
    cached_tf = build_image_transform(vc, cache_dir=str(tmp_path / "cache"))
    first = cached_tf(path)
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 1
    np.testing.assert_array_equal(cached_tf(path).numpy(), first.numpy())
    mean, std = vc.mean[0], vc.std[0]
    np.testing.assert_allclose(first[0].numpy(), (pad - mean) / std, atol=1e-5)  # normalised with the config
    train_tf = build_image_transform(vc, train=True)
    torch.manual_seed(0)
    a = train_tf(path)
    torch.manual_seed(0)
    assert torch.equal(a, train_tf(path)) and not torch.equal(a, train_tf(path))
    assert not torch.equal(build_image_transform(vc, train=True, augment=False)(path), a)
    assert torch.equal(build_image_transform(vc, train=True, augment=False)(path), build_image_transform(vc)(path))


def test_png_8_and_16_bit_scaled_by_depth(tmp_path):
    from PIL import Image

    ramp16 = (np.arange(32 * 16, dtype=np.uint16).reshape(32, 16) * 97) % 65535
    Image.fromarray(ramp16).save(tmp_path / "ramp16.png")
    np.testing.assert_allclose(load_image(tmp_path / "ramp16.png"), ramp16 / 65535.0, atol=1e-6)
    ramp8 = (np.arange(32 * 16).reshape(32, 16) % 256).astype(np.uint8)
    Image.fromarray(ramp8).save(tmp_path / "ramp8.png")
    np.testing.assert_allclose(load_image(tmp_path / "ramp8.png"), ramp8 / 255.0, atol=1e-6)
    rgb = np.stack([ramp8, 255 - ramp8, ramp8 // 2], axis=-1)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    assert load_image(tmp_path / "rgb.png").shape == (32, 16, 3)
