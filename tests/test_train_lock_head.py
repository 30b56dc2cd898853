"""LiT with a new head: ``train.lock_image`` + ``train.train_image_head`` (the cxr-lite recipe's setting)."""

import torch

from medclip.loss import clip_loss
from medclip.train.build import build_model
from medclip.train.config import recipe_from_dict
from medclip.train.distributed import DistInfo
from medclip.train.optim import build_optimizer


def _recipe(**train):
    return recipe_from_dict({"model": "tiny-vit", "train": {"lock_image": True, "warmup": 0, "lr": 1e-2, **train}})


def _step(recipe):
    model, core = build_model(recipe, DistInfo())
    trunk = {k: v.clone() for k, v in core.visual.trunk.state_dict().items()}
    head = core.visual.head.weight.detach().clone()
    optimizer = build_optimizer(core, recipe.train)
    g = torch.Generator().manual_seed(0)
    images, ids = torch.randn(4, 1, 64, 64, generator=g), torch.randint(1, 400, (4, 12), generator=g)
    out = model(images, ids)
    clip_loss(out["image_features"], out["text_features"], out["logit_scale"]).backward()
    optimizer.step()
    trunk_same = all(torch.equal(v, core.visual.trunk.state_dict()[k]) for k, v in trunk.items())
    return trunk_same, torch.equal(head, core.visual.head.weight.detach()), core


def test_locked_image_tower_keeps_head_fixed_by_default():
    trunk_same, head_same, core = _step(_recipe())
    assert trunk_same and head_same
    assert not core.visual.training  # locked tower stays in eval mode (norm statistics frozen)


def test_train_image_head_trains_only_the_projection():
    trunk_same, head_same, core = _step(_recipe(train_image_head=True))
    assert trunk_same, "the locked trunk must not change (weights and norm statistics)"
    assert not head_same, "the new image projection must train"
    assert not any(p.requires_grad for p in core.visual.trunk.parameters())
