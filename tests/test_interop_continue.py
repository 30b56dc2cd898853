"""Continued pretraining from a converted model: ``train.init_from`` + open_clip-style partial unlocking +
per-tower learning rates. The loss falls, unlocked groups change, locked ones stay bit-identical."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import medclip
from medclip.cli import main
from medclip.errors import ConfigError
from medclip.train.config import recipe_from_dict
from medclip.train.continued import image_groups, text_groups

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import demo_recipe_dict  # noqa: E402
from test_interop_zoo import _write_hub, randomise  # noqa: E402


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    """A tiny open_clip hub folder (CLIP's 49408-token vocabulary) converted by ``medclip convert``."""
    import open_clip

    tmp = tmp_path_factory.mktemp("continue")
    vision = dict(layers=2, width=64, patch_size=8, image_size=32)
    text = dict(context_length=32, vocab_size=49408, width=32, heads=1, layers=2)
    torch.manual_seed(0)
    reference = randomise(open_clip.model.CLIP(24, vision, text, quick_gelu=True), seed=4)
    with torch.no_grad():
        reference.logit_scale.fill_(2.0)  # a plausible pretrained temperature for a few steps of training
    cfg = {"embed_dim": 24, "quick_gelu": True, "vision_cfg": vision, "text_cfg": text}
    _write_hub(tmp / "hub", reference, cfg)
    assert main(["convert", str(tmp / "hub"), "--output", str(tmp / "model")]) == 0
    return tmp / "model"


@pytest.mark.slow
def test_recipe_continues_from_converted_model(converted, demo_corpus, tmp_path):
    from medclip.train.loop import train

    recipe = demo_recipe_dict(demo_corpus, init_from=str(converted), lock_image=True, lock_image_unlocked_groups=2,
                              lock_text=True, lock_text_unlocked_layers=1, lr_image=3e-3, lr_text=1e-3, lr=3e-3,
                              max_steps=12, epochs=20, eval_every=0, warmup=0)
    del recipe["model"]
    result = train(recipe_from_dict(recipe), str(tmp_path / "run"))
    assert result["step"] == 12 and result["last_loss"] < result["first_loss"]
    start = medclip.from_pretrained(str(converted))
    end = medclip.from_pretrained(str(tmp_path / "run" / "model"))
    for groups, unlocked in ((image_groups, 2), (text_groups, 1)):
        tower = "visual" if groups is image_groups else "text"
        before, after = groups(getattr(start, tower)), groups(getattr(end, tower))
        assert len(before) > unlocked + 1
        for i, (a, b) in enumerate(zip(before, after)):
            same = all(torch.equal(p, q) for p, q in zip(a, b))
            assert same == (i < len(before) - unlocked), f"{tower} group {i} of {len(before)}"


def test_init_from_config_errors(converted):
    with pytest.raises(ConfigError, match="remove the model section"):
        recipe_from_dict({"model": "tiny-vit", "train": {"init_from": str(converted)}})
    with pytest.raises(ConfigError, match="lock_image_unlocked_groups needs train.lock_image"):
        recipe_from_dict({"model": "tiny-vit", "train": {"lock_image_unlocked_groups": 2}})
    with pytest.raises(ConfigError, match="init_from_options.modelname"):
        recipe_from_dict({"train": {"init_from": str(converted), "init_from_options": {"modelname": "x"}}})
    recipe = recipe_from_dict({"train": {"init_from": str(converted), "loss": "siglip"}})
    assert recipe.model.init_logit_bias == -10.0 and "model" not in recipe.to_dict()
