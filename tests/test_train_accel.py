"""Speed/reproducibility switches of training (medclip.train.accel): each one's CPU behaviour.

``train.compile`` gives the eager loss and does not recompile for batches of other report lengths;
``channels_last``, TF32, fused AdamW, pinned memory and ``non_blocking`` copies leave CPU results
unchanged; ``train.deterministic`` sets ``CUBLAS_WORKSPACE_CONFIG`` before CUDA could start.
"""

from __future__ import annotations

import copy
import os
from types import SimpleNamespace

import pytest
import torch

import medclip
from medclip.train import accel

REPORTS = ["No acute cardiopulmonary disease.", "Small left pleural effusion with adjacent atelectasis.",
           "The heart is enlarged. Opacity in the right lower zone.", "Clear lungs."]
CFG = SimpleNamespace(loss="dense", gradcache_chunk=0)


def _batch(reports=REPORTS, seed: int = 0) -> dict:
    images = torch.randn(len(reports), 1, 64, 64, generator=torch.Generator().manual_seed(seed))
    return {"image": images, "text": medclip.get_tokenizer("tiny-vit")(reports)}


def _loss(model, batch) -> float:
    from medclip.train.loop import forward_backward

    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return forward_backward(model, batch, CFG, torch.device("cpu"), "fp32", scaler)


@pytest.mark.slow  # inductor compiles forward and backward of both towers: ~1 min of CPU
def test_compiled_towers_give_the_eager_loss_without_recompiling(tiny_model):
    import torch._dynamo

    compiled = accel.accelerate_model(copy.deepcopy(tiny_model).train(), channels_last=False, compile_towers=True)
    eager = copy.deepcopy(tiny_model).train()
    batches = [_batch(), _batch([r + " Stable." for r in REPORTS[:3]], seed=1),
               _batch(["Pneumonia.", REPORTS[1] * 2, "Normal chest.", REPORTS[2]], seed=2)]
    torch._dynamo.reset()
    try:
        for index, batch in enumerate(batches):
            # the first two batches may compile (static, then dynamic shapes); a third length must not
            with torch._dynamo.config.patch(error_on_recompile=index == 2):
                got, want = _loss(compiled, batch), _loss(eager, batch)
            assert abs(got - want) <= 1e-4 * abs(want), index
    finally:
        torch._dynamo.reset()
    grads = {k: p.grad for k, p in eager.named_parameters() if p.grad is not None}
    for name, param in compiled.named_parameters():
        if name in grads:
            assert torch.allclose(param.grad, grads[name], rtol=1e-3, atol=1e-5), name
    assert compiled.state_dict().keys() == eager.state_dict().keys()  # checkpoints keep their names


@pytest.mark.slow  # two ResNet steps (~3.5 s of CPU)
def test_channels_last_cnn_tower_same_loss_on_cpu():
    torch.manual_seed(0)
    model = medclip.create_model("tiny-rn").train()
    nhwc = accel.accelerate_model(copy.deepcopy(model), channels_last=True, compile_towers=False)
    conv = next(m for m in nhwc.visual.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.shape[-1] > 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    batch = _batch()
    assert _loss(nhwc, batch) == pytest.approx(_loss(model, batch), rel=1e-5)
    vit = accel.accelerate_model(medclip.create_model("tiny-vit"), channels_last=True, compile_towers=False)
    patch = next(m for m in vit.visual.modules() if isinstance(m, torch.nn.Conv2d))
    assert not accel.is_cnn(vit.visual) and patch.weight.is_contiguous()  # ViTs are left as they are


def test_tf32_is_an_explicit_setting_off_by_default_and_cpu_math_is_unchanged():
    from medclip.train.config import TrainConfig

    assert TrainConfig().tf32 is False
    a, b = torch.randn(64, 64), torch.randn(64, 64)
    before = accel.tf32_enabled()
    try:
        accel.configure_backends(deterministic=False, tf32=True)
        assert accel.tf32_enabled()
        with_tf32 = a @ b
        accel.configure_backends(deterministic=False, tf32=False)
        assert not accel.tf32_enabled()
        assert torch.equal(with_tf32, a @ b)
    finally:
        accel.set_tf32(before)


def test_deterministic_sets_cublas_workspace_before_cuda_starts(monkeypatch):
    from medclip.train import loop
    from medclip.train.config import recipe_from_dict

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    seen = {}

    def fake_init(device):  # where CUDA would start: stop the run here
        seen["env"] = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
        seen["deterministic"] = torch.are_deterministic_algorithms_enabled()
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "init_distributed", fake_init)
    recipe = recipe_from_dict({"model": "tiny-vit", "train": {"deterministic": True}})
    try:
        with pytest.raises(KeyboardInterrupt):
            loop.train(recipe, "unused-run-folder")
    finally:
        torch.use_deterministic_algorithms(False)
    assert seen == {"env": accel.CUBLAS_WORKSPACE, "deterministic": True}
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    try:
        accel.configure_backends(deterministic=True, tf32=False)
    finally:
        torch.use_deterministic_algorithms(False)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"  # a user's own value is kept


def test_adamw_pinned_memory_and_copies_fall_back_on_cpu(tiny_model):
    from medclip.train.optim import build_optimizer, param_groups

    model, reference = copy.deepcopy(tiny_model).train(), copy.deepcopy(tiny_model).train()
    assert accel.fused_adamw(model) is None and accel.pin_memory(torch.device("cpu")) is False
    assert accel.pin_memory(torch.device("cuda")) is True
    batch = _batch()
    images, texts = accel.to_device(batch, torch.device("cpu"))
    assert torch.equal(images, batch["image"]) and torch.equal(texts, batch["text"])
    cfg = SimpleNamespace(weight_decay=0.2, decay_embeddings=False, lr=1e-3, betas=[0.9, 0.98], eps=1e-6)
    optimizer = build_optimizer(model, cfg)
    plain = torch.optim.AdamW(param_groups(reference, 0.2), lr=1e-3, betas=(0.9, 0.98), eps=1e-6, foreach=False)
    assert not optimizer.defaults["fused"]
    for m, opt in ((model, optimizer), (reference, plain)):
        _loss(m, batch)
        opt.step()
    for (name, a), b in zip(model.named_parameters(), reference.parameters()):
        assert torch.allclose(a, b, atol=1e-6), name
