"""The CUDA path, on a GPU: bf16/fp16 steps, GradScaler, tiled loss, exact resume, NCCL DDP, torch.compile.

Every test here is marked ``gpu`` and skipped without CUDA (also in CI). ``bash bench/gpu.sh`` runs them
on a GPU machine before its benchmark table.
"""

from __future__ import annotations

import copy
import socket
from types import SimpleNamespace

import pytest
import torch

import medclip

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

REPORTS = ["No acute cardiopulmonary disease.", "Small left pleural effusion with adjacent atelectasis.",
           "The heart is enlarged. Opacity in the right lower zone.", "Clear lungs.", "Pneumonia.",
           "Right pleural effusion. No pneumothorax. Degenerative changes of the thoracic spine.",
           "Normal heart size.", "Opacity in the left upper zone."]
CFG = SimpleNamespace(loss="dense", gradcache_chunk=0)


def _model_and_batch(name: str = "tiny-vit"):
    torch.manual_seed(0)
    model = medclip.create_model(name).cuda().train()
    batch = {"image": torch.randn(len(REPORTS), 1, 64, 64), "text": medclip.get_tokenizer(name)(REPORTS)}
    return model, batch


def _step_loss(model, batch, precision: str, scaler=None) -> float:
    from medclip.train.loop import forward_backward

    scaler = scaler or torch.amp.GradScaler("cuda", enabled=False)
    return forward_backward(model, batch, CFG, torch.device("cuda"), precision, scaler)


def test_bf16_autocast_step_matches_fp32_and_uses_fused_adamw():
    from medclip.train.optim import build_optimizer

    model, batch = _model_and_batch()
    bf16 = copy.deepcopy(model)
    loss32, loss16 = _step_loss(model, batch, "fp32"), _step_loss(bf16, batch, "bf16")
    assert abs(loss16 - loss32) <= 1e-2 * abs(loss32)
    grads = [p.grad for p in bf16.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    cfg = SimpleNamespace(weight_decay=0.2, decay_embeddings=False, lr=1e-4, betas=[0.9, 0.98], eps=1e-6)
    optimizer = build_optimizer(bf16, cfg)
    assert optimizer.defaults["fused"] is True
    optimizer.step()


def test_fp16_grad_scaler_skips_an_inf_step():
    from medclip.train.loop import optimizer_step
    from medclip.train.optim import build_scheduler

    model, batch = _model_and_batch()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = build_scheduler(optimizer, warmup=0, total_steps=10)
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0**10)
    _step_loss(model, batch, "fp16", scaler)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.text.text_projection.weight.grad[0, 0] = float("inf")
    optimizer_step(model, optimizer, scheduler, scaler, clip_grad=1.0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # step skipped
    assert scaler.get_scale() == 2.0**9  # and the scale backed off
    _step_loss(model, batch, "fp16", scaler)
    optimizer_step(model, optimizer, scheduler, scaler, clip_grad=1.0)
    assert not torch.equal(before["text.text_projection.weight"], model.text.text_projection.weight)


def test_tiled_loss_equals_dense_on_cuda_at_8192():
    from medclip.loss import clip_loss, tiled_clip_loss

    gen = torch.Generator(device="cuda").manual_seed(0)
    feats = [torch.nn.functional.normalize(torch.randn(8192, 256, device="cuda", generator=gen), dim=1)
             for _ in range(2)]
    results = []
    for fn in (clip_loss, tiled_clip_loss):
        img, txt = (f.clone().requires_grad_() for f in feats)
        scale = torch.tensor(30.0, device="cuda", requires_grad=True)
        loss = fn(img, txt, scale)
        loss.backward()
        results.append((loss.detach(), img.grad, txt.grad, scale.grad))
    (dense, *dense_grads), (tiled, *tiled_grads) = results
    assert abs(float(tiled - dense)) <= 1e-5 * abs(float(dense))
    for a, b in zip(dense_grads, tiled_grads):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)


def test_exact_resume_on_cuda(demo_corpus, tmp_path):
    from conftest import demo_recipe_dict
    from safetensors.torch import load_file

    from medclip.train.config import recipe_from_dict
    from medclip.train.loop import train

    spec = demo_recipe_dict(demo_corpus, epochs=2, checkpoint_every=3, device="cuda", deterministic=True,
                            eval_every=0)
    try:
        train(recipe_from_dict(copy.deepcopy(spec)), str(tmp_path / "straight"))
        train(recipe_from_dict(copy.deepcopy(spec)), str(tmp_path / "resumed"), max_steps=4)  # stops mid-epoch
        assert torch.are_deterministic_algorithms_enabled()
        train(recipe_from_dict(copy.deepcopy(spec)), str(tmp_path / "resumed"), resume=True)
    finally:
        torch.use_deterministic_algorithms(False)  # train.deterministic is process-wide
    want = load_file(str(tmp_path / "straight" / "model" / "model.safetensors"))
    got = load_file(str(tmp_path / "resumed" / "model" / "model.safetensors"))
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want)


def test_one_process_nccl_ddp_step_equals_plain_step():
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    model, batch = _model_and_batch()
    plain = copy.deepcopy(model)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        assert dist.get_backend() == "nccl"
        ddp = DistributedDataParallel(model, device_ids=[torch.cuda.current_device()])
        loss_ddp, loss_plain = _step_loss(ddp, batch, "fp32"), _step_loss(plain, batch, "fp32")
    finally:
        dist.destroy_process_group()
    assert loss_ddp == pytest.approx(loss_plain, rel=1e-6)
    for (name, a), b in zip(model.named_parameters(), plain.parameters()):
        if b.grad is not None:
            assert torch.allclose(a.grad, b.grad, rtol=1e-5, atol=1e-7), name


def test_compiled_step_matches_eager_on_cuda():
    from medclip.train.accel import accelerate_model

    model, batch = _model_and_batch()
    compiled = accelerate_model(copy.deepcopy(model), channels_last=False, compile_towers=True)
    loss_eager, loss_compiled = _step_loss(model, batch, "fp32"), _step_loss(compiled, batch, "fp32")
    assert abs(loss_compiled - loss_eager) <= 1e-4 * abs(loss_eager)  # TF32 is off by default: exact fp32
    for (name, a), b in zip(compiled.named_parameters(), model.parameters()):
        if b.grad is not None:
            assert torch.allclose(a.grad, b.grad, rtol=1e-3, atol=1e-5), name
    loss_bf16 = _step_loss(compiled, batch, "bf16")  # the mixed-precision step compiles too
    assert abs(loss_bf16 - loss_eager) <= 1e-2 * abs(loss_eager)
