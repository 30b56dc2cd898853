"""The tiled InfoNCE equals the dense loss (values and gradients) and open_clip's ClipLoss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medclip.loss import clip_loss, gather_features, tiled_clip_loss


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
def test_tiled_equals_dense_values_and_grads(n, block):
    img, txt, scale = _features(n, 24)
    dense = _loss_and_grads(clip_loss, img, txt, scale)
    tiled = _loss_and_grads(tiled_clip_loss, img, txt, scale, block=block)
    for a, b in zip(dense, tiled):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


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
