"""``create_model_and_transforms``: one call for model + preprocessing; the transforms take a path, a PIL
image, a NumPy array or a tensor and give the same pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import medclip
from medclip.errors import DataError


def test_transforms_accept_path_pil_array_tensor(tmp_path):
    model, train, evaluate = medclip.create_model_and_transforms("tiny-vit")
    assert train.random is not None and evaluate.random is None
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (80, 50), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "x.png")
    from_path = evaluate(str(tmp_path / "x.png"))
    size = model.config.vision.image_size
    assert from_path.shape == (model.config.vision.in_chans, size, size)
    for image in (Image.fromarray(pixels), pixels, torch.from_numpy(pixels), torch.from_numpy(pixels)[None]):
        torch.testing.assert_close(evaluate(image), from_path, rtol=0, atol=1e-5)
    # RGB (luma), 16-bit and float inputs round differently: within one 8-bit step of the file pipeline
    step = 1 / 255 / float(evaluate._std.min()) + 1e-5
    for image in (Image.fromarray(pixels).convert("RGB"), pixels.astype(np.uint16) * 257,
                  pixels.astype(np.float32) / 255):
        assert (evaluate(image) - from_path).abs().max() <= step
    with torch.no_grad():
        assert model.encode_image(evaluate(pixels)[None]).shape == (1, model.config.embed_dim)
    with pytest.raises(DataError, match=r"in \[0, 1\]"):
        evaluate(pixels.astype(np.float32))
    with pytest.raises(DataError, match="must be"):
        evaluate(np.zeros((2, 3, 4, 5), dtype=np.uint8))


def test_create_model_and_transforms_loads_a_model_folder(tmp_path):
    model = medclip.create_model("tiny-vit").eval()
    model.save_pretrained(tmp_path / "m")
    loaded, _, evaluate = medclip.create_model_and_transforms(str(tmp_path / "m"))
    image = evaluate(np.full((40, 40), 0.25, dtype=np.float32))
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_image(image[None]), model.encode_image(image[None]))
