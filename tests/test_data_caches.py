"""Caches: a corrupt preprocessing .npy, prompt-cache file or feature-cache shard is recomputed, never used."""

from __future__ import annotations

import logging
import os

import crafted
import numpy as np
import pytest
import torch

import medclip
from medclip.data import build_image_transform


@pytest.fixture()
def transform(tmp_path):
    return build_image_transform(medclip.config.VisionConfig(image_size=32, in_chans=1), cache_dir=str(tmp_path / "c"))


@pytest.mark.parametrize("damage", ["empty", "garbage", "wrong_shape", "nan", "wrong_dtype", "bit_flip"])
def test_npy_cache_damage_is_recomputed_with_a_warning(tmp_path, transform, damage, caplog):
    path = str(crafted.png(tmp_path / "x.png", 48, 40))
    fresh = transform.prepare(path)
    cached = transform.cache_path(path)
    assert os.path.exists(cached) and fresh.shape == (1, 32, 32)
    if damage == "empty":
        open(cached, "wb").close()
    elif damage == "garbage":
        with open(cached, "wb") as f:
            f.write(os.urandom(200))
    elif damage == "bit_flip":  # same shape and dtype, one pixel changed: only the checksum can tell
        data = bytearray(open(cached, "rb").read())
        data[200] ^= 0x10
        open(cached, "wb").write(bytes(data))
    else:
        bad = {"wrong_shape": np.zeros((3, 7), np.float32), "nan": np.full_like(fresh, np.nan),
               "wrong_dtype": fresh.astype(np.float64)}[damage]
        np.save(cached, bad, allow_pickle=False)
    with caplog.at_level(logging.WARNING):
        again = transform.prepare(path)
    np.testing.assert_array_equal(again, fresh)
    assert "recomputing it" in caplog.text
    assert transform(path).shape == (1, 32, 32)  # and the cache is good again
    stored = np.load(cached)
    assert stored.dtype == np.uint8 and stored.nbytes == 32 * 32  # an 8-bit PNG is stored as uint8
    np.testing.assert_array_equal(stored.astype(np.float32) / np.float32(255), fresh)


def _tamper(path: str) -> None:
    """Flip the sign of the stored tensor but keep the file's metadata (old checksum): a silent edit."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(path, framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    save_file({k: -v for k, v in tensors.items()}, path, metadata=meta)


def test_tampered_prompt_cache_is_recomputed(tiny_model, tokenizer, tmp_path, caplog):
    from medclip.eval.prompts import cached_text_embeddings

    texts = ["no opacity", "left upper lobe opacity"]
    first = cached_text_embeddings(tiny_model, tokenizer, texts, str(tmp_path))
    (path,) = [os.path.join(tmp_path, n) for n in os.listdir(tmp_path)]
    _tamper(path)
    with caplog.at_level(logging.WARNING):
        again = cached_text_embeddings(tiny_model, tokenizer, texts, str(tmp_path))
    torch.testing.assert_close(again, first)  # not the flipped embeddings (which would flip AUROC)
    assert "fails its checksum" in caplog.text
    open(path, "wb").close()  # an empty file (killed write)
    torch.testing.assert_close(cached_text_embeddings(tiny_model, tokenizer, texts, str(tmp_path)), first)


@pytest.mark.slow
def test_corrupt_feature_shard_is_skipped_and_reencoded(tiny_model, tmp_path, caplog):
    import medclip_adapters as ma

    paths = [str(crafted.png(tmp_path / f"i{i}.png", 40)) for i in range(3)]
    cache = ma.FeatureCache(str(tmp_path / "cache"))
    first = cache.features(tiny_model, paths)
    folder = os.path.join(tmp_path, "cache", cache.key(tiny_model))
    (shard,) = [os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".safetensors")]
    _tamper(shard)
    fresh = ma.FeatureCache(str(tmp_path / "cache"))
    with caplog.at_level(logging.WARNING):
        again = fresh.features(tiny_model, paths)
    assert "feature-cache shard" in caplog.text and fresh.encoded == 3  # re-encoded, not read
    torch.testing.assert_close(again, first)
    with open(shard, "r+b") as f:  # truncated shard
        f.truncate(40)
    third = ma.FeatureCache(str(tmp_path / "cache"))
    torch.testing.assert_close(third.features(tiny_model, paths), first)
