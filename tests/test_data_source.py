"""The data layer's loaders and sources: batch sizes as asked, one DataSource interface for CSV and shards."""

from __future__ import annotations

import medclip
from medclip.data.config import DataConfig
from medclip.data.dataset import build_dataloaders


def _loaders(manifest, tmp_path, **kwargs) -> dict:
    data = DataConfig(manifest=str(manifest), sections=None, eval_batch_size=8,
                      cache_dir=str(manifest.parent / "cache"))
    config = medclip.get_model_config("tiny-vit")
    return build_dataloaders(data, config, medclip.get_tokenizer(config), seed=0, out_dir=tmp_path, **kwargs)


def test_train_loader_takes_the_training_batch_size_and_val_the_eval_size(demo_corpus, tmp_path):
    loaders = _loaders(demo_corpus, tmp_path, train_batch_size=5)
    assert loaders["train"].batch_size == 5 and loaders["val"].batch_size == loaders["test"].batch_size == 8
    first = next(iter(loaders["train"]))
    assert first["image"].shape[0] == len(first["path"]) == 5
    assert len(loaders["train"]) == len(loaders["train"].dataset) // 5  # incomplete last batch dropped
    assert [len(b["path"]) for b in loaders["val"]][0] == min(8, len(loaders["val"].dataset))
    assert _loaders(demo_corpus, tmp_path)["train"].batch_size == 8  # not given: the eval size, as documented
