"""The tiled InfoNCE equals the dense loss and open_clip's ClipLoss; the streamed SigLIP loss equals open_clip's
SigLipLoss (values and gradients); the loss registry."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from medclip.errors import ConfigError
from medclip.loss import LOSSES, clip_loss, gather_features, get_loss, siglip_loss, tiled_clip_loss


def _features(n, d, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=1).requires_grad_()
    txt = F.normalize(torch.randn(n, d, generator=g, dtype=dtype) + 0.5 * img.detach(), dim=1).requires_grad_()
    scale = torch.tensor(14.3, dtype=dtype, requires_grad=True)
    return img, txt, scale


def _loss_and_grads(fn, img, txt, scale, **kw):
    loss = fn(img, txt, scale, **kw)
    return (loss, *torch.autograd.grad(loss, (img, txt, scale)))


@pytest.mark.parametrize("n,block", [(1, None), (7, 3), (64, None), (203, 16), (203, 203)])
@pytest.mark.slow
def test_tiled_equals_dense_values_and_grads(n, block):
    img, txt, scale = _features(n, 24)
    dense = _loss_and_grads(clip_loss, img, txt, scale)
    tiled = _loss_and_grads(tiled_clip_loss, img, txt, scale, block=block)
    for a, b in zip(dense, tiled):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


@pytest.mark.slow
def test_tiled_matches_open_clip_cliploss_fp32():
    from open_clip.loss import ClipLoss

    img, txt, scale = _features(512, 64, dtype=torch.float32, seed=1)
    ref = _loss_and_grads(ClipLoss(), img, txt, scale)
    tiled = _loss_and_grads(tiled_clip_loss, img, txt, scale, block=100)
    for a, b in zip(ref, tiled):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    assert ref[0].item() > 0 and ref[1].abs().max() > 0  # a real, non-trivial loss


def test_tiled_large_logits_stay_finite():
    # logit_scale 100 and near-identical rows: the online log-sum-exp must not overflow
    img, txt, _ = _features(96, 8, dtype=torch.float32)
    scale = torch.tensor(100.0, requires_grad=True)
    dense = _loss_and_grads(clip_loss, img.double(), txt.double(), scale.double())
    tiled = _loss_and_grads(tiled_clip_loss, img, txt, scale, block=10)
    assert all(torch.isfinite(t).all() for t in tiled)
    torch.testing.assert_close(tiled[0].double(), dense[0], rtol=1e-5, atol=1e-5)


def test_tiled_bf16_inputs_return_bf16_grads():
    img, txt, scale = _features(32, 16, dtype=torch.float32)
    img16 = img.detach().bfloat16().requires_grad_()
    txt16 = txt.detach().bfloat16().requires_grad_()
    loss = tiled_clip_loss(img16, txt16, scale)
    loss.backward()
    assert loss.dtype == torch.float32 and img16.grad.dtype == torch.bfloat16
    torch.testing.assert_close(loss, clip_loss(img16.float(), txt16.float(), scale), rtol=1e-5, atol=1e-5)


def test_shape_mismatch_is_clear():
    with pytest.raises(ValueError, match="same shape"):
        tiled_clip_loss(torch.zeros(3, 4), torch.zeros(2, 4), 1.0)


def test_gather_without_process_group_is_identity():
    a, b = torch.randn(3, 4), torch.randn(3, 4)
    ga, gb = gather_features(a, b)
    assert ga is a and gb is b


# ---- SigLIP ----

def _siglip_inputs(n, d, dtype, seed=2):
    img, txt, _ = _features(n, d, dtype=dtype, seed=seed)
    scale = torch.tensor(10.0, dtype=dtype, requires_grad=True)
    bias = torch.tensor(-7.3, dtype=dtype, requires_grad=True)
    return img, txt, scale, bias


def _grads4(loss, inputs):
    return (loss, *torch.autograd.grad(loss, inputs))


def test_siglip_matches_open_clip_siglip_loss_fp32():
    from open_clip.loss import SigLipLoss

    inputs = _siglip_inputs(300, 48, torch.float32)
    ref = _grads4(SigLipLoss()(*inputs), inputs)
    ours = _grads4(siglip_loss(*inputs, block=64), inputs)
    for a, b in zip(ref, ours):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    assert ref[0].item() > 0 and ref[4].abs() > 0  # a real loss; the bias gets a gradient


@pytest.mark.parametrize("n,block", [(1, None), (9, 4), (130, 130), (130, 17)])
def test_siglip_blocks_equal_dense_reference_fp64(n, block):
    from open_clip.loss import SigLipLoss

    inputs = _siglip_inputs(n, 20, torch.float64, seed=n)
    ref = _grads4(SigLipLoss()(*inputs), inputs)
    ours = _grads4(siglip_loss(*inputs, block=block), inputs)
    for a, b in zip(ref, ours):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


def test_siglip_needs_a_bias_and_runs_without_grad():
    img, txt, scale, bias = _siglip_inputs(16, 8, torch.float32)
    with pytest.raises(ConfigError, match="logit_bias"):
        siglip_loss(img, txt, scale)
    with torch.no_grad():
        value = siglip_loss(img, txt, scale, bias)
    assert torch.isclose(value, siglip_loss(img, txt, scale, bias).detach())


@pytest.mark.slow
def test_registry_names_and_model_output_call():
    import medclip
    from medclip.train.config import recipe_from_dict

    with pytest.raises(ConfigError, match="siglip"):
        get_loss("sigmoid")
    with pytest.raises(ConfigError, match="train.loss"):
        recipe_from_dict({"model": "tiny-vit", "train": {"loss": "nope"}})
    recipe = recipe_from_dict({"model": "tiny-vit", "train": {"loss": "siglip"}})
    assert recipe.model.init_logit_bias == -10.0 and abs(recipe.model.init_logit_scale - math.log(10)) < 1e-12
    torch.manual_seed(0)
    model = medclip.create_model(recipe.model)
    out = model(torch.randn(4, 1, 64, 64), medclip.get_tokenizer(recipe.model)(["a", "b", "c", "d"]))
    assert set(out) == {"image_features", "text_features", "logit_scale", "logit_bias"}
    for name in LOSSES:
        loss = get_loss(name)(**out)
        loss.backward(retain_graph=True)
        assert torch.isfinite(loss)
    assert model.logit_bias.grad is not None and model.logit_bias.grad != 0  # siglip moved the bias
    plain = medclip.create_model("tiny-vit")(torch.randn(2, 1, 64, 64))
    assert "logit_bias" not in plain


# ---- identical reports are not negatives (issue 16) ----

def _masked_reference(img, txt, scale, ids):
    """InfoNCE written row by row: for pair i, the denominators skip every j != i whose text id equals i's."""
    sims = scale * img @ txt.T
    n, terms = len(ids), []
    for i in range(n):
        keep = [j for j in range(n) if j == i or ids[j] != ids[i]]
        terms.append(torch.logsumexp(sims[i, keep], 0) - sims[i, i])  # image i over texts
        terms.append(torch.logsumexp(sims[keep, i], 0) - sims[i, i])  # text i over images
    return torch.stack(terms).sum() / (2 * n)


@pytest.mark.parametrize("block", [None, 5, 13])
def test_identical_reports_masked_dense_and_tiled_equal_reference(block):
    img, txt, scale = _features(29, 12)
    ids = torch.tensor([i % 7 if i < 20 else 100 + i for i in range(29)])  # groups of 3 identical reports
    ref = _loss_and_grads(lambda *a: _masked_reference(*a, ids.tolist()), img, txt, scale)
    dense = _loss_and_grads(clip_loss, img, txt, scale, text_ids=ids)
    tiled = _loss_and_grads(tiled_clip_loss, img, txt, scale, text_ids=ids, block=block)
    for a, b, c in zip(ref, dense, tiled):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(c, a, rtol=1e-10, atol=1e-12)
    unmasked = clip_loss(img, txt, scale)
    assert unmasked.item() > ref[0].item() + 1e-3  # masking removed real negatives
    distinct = torch.arange(29)  # all different: no masking at all
    torch.testing.assert_close(tiled_clip_loss(img, txt, scale, text_ids=distinct, block=block), unmasked)


def test_training_step_masks_identical_reports():
    import medclip
    from medclip.loss import text_id
    from medclip.train.build import build_model
    from medclip.train.config import recipe_from_dict
    from medclip.train.distributed import DistInfo
    from medclip.train.loop import forward_backward

    assert text_id("Small  left EFFUSION ") == text_id("small left effusion") != text_id("small right effusion")
    with pytest.raises(ConfigError, match="InfoNCE"):
        recipe_from_dict({"model": "tiny-vit", "train": {"mask_identical_reports": True, "loss": "siglip"}})
    recipe = recipe_from_dict({"model": "tiny-vit", "train": {"mask_identical_reports": True}})
    model, core = build_model(recipe, DistInfo())
    core.eval()
    reports = ["no effusion", "cardiomegaly", "No  effusion", "edema", "cardiomegaly", "no effusion"]
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.randn(6, 1, 64, 64, generator=g), "text": medclip.get_tokenizer("tiny-vit")(reports),
             "text_id": torch.tensor([text_id(r) for r in reports])}
    loss = forward_backward(model, batch, recipe.train, torch.device("cpu"), "fp32",
                            torch.amp.GradScaler("cpu", enabled=False))
    with torch.no_grad():
        out = core(batch["image"], batch["text"])
        masked, unmasked = clip_loss(**out, text_ids=batch["text_id"]), clip_loss(**out)
    assert abs(loss - float(masked)) < 1e-5 and abs(float(masked) - float(unmasked)) > 1e-4


@pytest.mark.parametrize("block", [2, 3, None])
def test_identical_reports_filling_a_block_column_stay_exact(block):
    # rows 0-3 share one report: with blocks of 2 or 3 rows, columns 2-3 (or 3) are masked in every row of the
    # first block, so that block has no entry at all in those columns (the online column max starts at −inf)
    img, txt, scale = _features(11, 6, seed=3)
    ids = torch.tensor([0, 0, 0, 0, 1, 2, 3, 4, 5, 1, 6])
    ref = _loss_and_grads(lambda *a: _masked_reference(*a, ids.tolist()), img, txt, scale)
    tiled = _loss_and_grads(tiled_clip_loss, img, txt, scale, text_ids=ids, block=block)
    for a, b in zip(ref, tiled):
        assert torch.isfinite(b).all()
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype,scale,tol", [(torch.float64, 400.0, 1e-10), (torch.float32, 100.0, 1e-5)])
def test_tiled_far_apart_logsumexps_equal_dense(dtype, scale, tol):
    # images near one direction, half the texts near it and half opposite: row and column log-sum-exps lie
    # ~2·scale apart, beyond the range where one exp serves both (the two-exp branches of both passes)
    g = torch.Generator().manual_seed(4)
    axis = F.one_hot(torch.tensor(0), 8).double()
    img = F.normalize(axis + 0.3 * torch.randn(40, 8, generator=g, dtype=torch.float64), dim=1)
    sign = torch.tensor([1.0, -1.0]).repeat(20)[:, None]
    txt = F.normalize(sign * axis + 0.3 * torch.randn(40, 8, generator=g, dtype=torch.float64), dim=1)
    inputs = [t.to(dtype).requires_grad_() for t in (img, txt, torch.tensor(scale, dtype=torch.float64))]
    exact = _loss_and_grads(clip_loss, *[t.detach().double().requires_grad_() for t in inputs])
    tiled = _loss_and_grads(tiled_clip_loss, *inputs, block=7)
    for a, b in zip(exact, tiled):
        torch.testing.assert_close(b.double(), a, rtol=tol, atol=tol * a.abs().max().item())
