"""Speed paths of the text tower equal the plain path: EOS-only last block, length buckets, fused q/k/v.

Each optimisation in ``medclip/text.py`` can be switched off; these tests compare outputs AND parameter
gradients of the fast path against the plain one on real report text, and our tower against open_clip's
with copied weights (the benchmark's setup).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

REPORTS = [
    "The heart is normal in size. The mediastinum is unremarkable. The lungs are clear.",
    "No acute cardiopulmonary disease.",
    "Mild cardiomegaly. Small left pleural effusion with adjacent atelectasis; no pneumothorax. " * 4,
    "Normal chest.",
    "Stable appearance of the chest. Degenerative changes of the thoracic spine. No focal consolidation.",
    "Pneumonia.",
]


def _plain(model):
    plain = copy.deepcopy(model)
    plain.text.eos_only_last_block = False
    plain.text.max_buckets = 1
    return plain


def _grads(model, ids):
    model.zero_grad(set_to_none=True)
    out = model.text(ids)
    (out * torch.linspace(-1, 1, out.shape[1])).sum().backward()
    return out.detach(), {k: p.grad.clone() for k, p in model.text.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("buckets", [1, 3])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_fast_text_path_equals_plain_path_with_gradients(tiny_model, tokenizer, buckets, checkpointing):
    ids = tokenizer(REPORTS)
    fast = copy.deepcopy(tiny_model).train()
    fast.text.eos_only_last_block = True
    fast.text.max_buckets = buckets
    fast.text.set_grad_checkpointing(checkpointing)
    plain = _plain(tiny_model).train()
    out_fast, grads_fast = _grads(fast, ids)
    out_plain, grads_plain = _grads(plain, ids)
    assert torch.allclose(out_fast, out_plain, atol=1e-5)
    assert grads_fast.keys() == grads_plain.keys()
    for name, grad in grads_plain.items():
        scale = grad.abs().max().clamp(min=1.0)
        assert (grads_fast[name] - grad).abs().max() <= 1e-5 * scale, name


def test_eos_only_attention_equals_full_causal_attention_at_eos():
    torch.manual_seed(0)
    from medclip.text import CausalSelfAttention

    attn = CausalSelfAttention(32, 4)
    x = torch.randn(5, 9, 32)
    eos = torch.tensor([8, 0, 3, 5, 8])
    full = attn(x)[torch.arange(5), eos]
    assert torch.allclose(attn.forward_last(x, eos), full, atol=1e-6)


def test_forward_embeds_fast_equals_plain(tiny_model, tokenizer):
    ids = tokenizer(REPORTS)
    embeds = tiny_model.text.token_embedding(ids).detach()
    mask = (torch.arange(ids.shape[1]) <= ids.argmax(-1)[:, None]).long()
    with torch.no_grad():
        fast = tiny_model.text.forward_embeds(embeds, mask)
        plain = _plain(tiny_model).text.forward_embeds(embeds, mask)
        from_ids = tiny_model.text(ids)
    assert torch.allclose(fast, plain, atol=1e-5)
    assert torch.allclose(fast, from_ids, atol=1e-5)


def test_text_tower_equals_open_clip_with_copied_weights(tokenizer):
    open_clip = pytest.importorskip("open_clip")
    import common

    import medclip

    torch.manual_seed(0)
    text_cfg = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2}
    ref = open_clip.CLIP(embed_dim=32, vision_cfg={"layers": 1, "width": 64, "patch_size": 16, "image_size": 32},
                         text_cfg=text_cfg).eval()
    ours = medclip.create_model("tiny-vit", embed_dim=32,
                                text={"width": 64, "heads": 4, "layers": 2, "mlp_ratio": 4.0}).eval()
    ours.text.max_buckets = 3
    common.copy_open_clip_text(ours.text, ref)
    ids = tokenizer(REPORTS)
    with torch.no_grad():
        diff = (ours.encode_text(ids) - ref.encode_text(ids, normalize=True)).abs().max()
    assert diff < 1e-5
