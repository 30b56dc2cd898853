"""The text tower's fast path (packed tokens, EOS-only last block) equals its plain reference path.

``CLIPTextTransformer.forward`` packs the batch's real tokens and computes only the EOS rows in the last
block; ``forward_reference`` runs every position of the padded batch through every block. These tests
compare outputs AND parameter gradients of the two on report-like text, and our tower against
open_clip's with copied weights (the benchmark's setup). The training step
(:func:`medclip.train.loop.forward_backward`) is checked to take the packed path.
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


def _grads(model, ids, reference: bool):
    model.zero_grad(set_to_none=True)
    out = model.text.forward_reference(ids) if reference else model.text(ids)
    (out * torch.linspace(-1, 1, out.shape[1])).sum().backward()
    return out.detach(), {k: p.grad.clone() for k, p in model.text.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.slow
def test_fast_text_path_equals_plain_path_with_gradients(tiny_model, tokenizer, checkpointing):
    ids = tokenizer(REPORTS)
    fast = copy.deepcopy(tiny_model).train()
    fast.text.set_grad_checkpointing(checkpointing)
    plain = copy.deepcopy(tiny_model).train()
    out_fast, grads_fast = _grads(fast, ids, reference=False)
    out_plain, grads_plain = _grads(plain, ids, reference=True)
    assert torch.allclose(out_fast, out_plain, atol=1e-5)
    assert grads_fast.keys() == grads_plain.keys()
    for name, grad in grads_plain.items():
        scale = grad.abs().max().clamp(min=1.0)
        assert (grads_fast[name] - grad).abs().max() <= 1e-5 * scale, name


def test_eos_only_attention_equals_full_causal_attention_at_eos():
    torch.manual_seed(0)
    from medclip.text import CausalSelfAttention, Packing

    attn = CausalSelfAttention(32, 4)
    x = torch.randn(5, 9, 32)
    eos = torch.tensor([8, 0, 3, 5, 8])
    full = attn.forward_reference(x)[torch.arange(5), eos]
    packing = Packing.from_eos(eos, 9)
    packed = packing.pack(x)
    assert torch.allclose(attn(packed, packing, last=True), full, atol=1e-6)
    assert torch.allclose(attn(packed, packing)[packing.ends], full, atol=1e-6)


def test_joint_projection_and_peft_lora_wrapped_projections():
    """q/k/v run as one GEMM while they are plain nn.Linear; once peft's LoRA wraps some, each is called."""
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    from medclip.text import CausalSelfAttention, Packing

    attn = CausalSelfAttention(32, 4)
    x = torch.randn(5, 9, 32)
    eos = torch.tensor([8, 0, 3, 5, 8])
    packing = Packing.from_eos(eos, 9)
    packed = packing.pack(x)
    plain = attn(packed, packing)
    attn = peft.inject_adapter_in_model(peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"]), attn)
    for name, param in attn.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param)  # peft starts B at zero (no change): make the adapters count
    full = attn.forward_reference(x)  # calls each (wrapped) projection itself
    assert (full[torch.arange(5), eos] - plain[packing.ends]).abs().max() > 1e-2  # LoRA changed the output
    assert torch.allclose(attn(packed, packing)[packing.ends], full[torch.arange(5), eos], atol=1e-5)
    assert torch.allclose(attn(packed, packing, last=True), full[torch.arange(5), eos], atol=1e-5)


def test_packing_round_trip_and_positions():
    from medclip.text import Packing

    eos = torch.tensor([2, 0, 4])
    packing = Packing.from_eos(eos, 5)
    grid = torch.arange(15.0).view(3, 5, 1).expand(3, 5, 4).requires_grad_()
    packed = packing.pack(grid)
    assert packed[:, 0].tolist() == [0, 1, 2, 5, 10, 11, 12, 13, 14]  # real positions, batch order
    assert packing.ends.tolist() == [2, 3, 8]  # EOS rows inside the packed matrix
    back = packing.to_grid(packed, heads=2).transpose(1, 2).reshape(3, 5, 4)
    real = (torch.arange(5) <= eos[:, None])[..., None]
    assert torch.equal(back, torch.where(real, grid, torch.zeros(())))  # padding comes back as zeros
    weights = torch.randn(3, 5, 4)
    (back * weights).sum().backward()
    assert torch.equal(grid.grad, torch.where(real, weights, torch.zeros(())))  # gradients reach real rows only
    attention_out = torch.randn(3, 2, 5, 2, requires_grad=True)
    rows = packing.from_grid(attention_out)
    assert torch.equal(rows, attention_out.transpose(1, 2).reshape(15, 4)[packing.index])
    rows.sum().backward()
    assert attention_out.grad.transpose(1, 2).reshape(15, 4)[packing.pad].abs().sum() == 0


@pytest.mark.slow
def test_training_step_uses_packed_text_path(tiny_model, tokenizer, monkeypatch):
    from types import SimpleNamespace

    from medclip.text import Packing
    from medclip.train.loop import forward_backward

    model = copy.deepcopy(tiny_model).train()
    seen = []
    original = Packing.from_eos.__func__
    monkeypatch.setattr(Packing, "from_eos", classmethod(lambda cls, eos, length: seen.append(length) or
                                                          original(cls, eos, length)))
    batch = {"image": torch.randn(len(REPORTS), 1, 64, 64), "text": tokenizer(REPORTS)}
    cfg = SimpleNamespace(loss="dense", gradcache_chunk=0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    loss = forward_backward(model, batch, cfg, torch.device("cpu"), "fp32", scaler)
    assert seen == [int(batch["text"].argmax(-1).max()) + 1]  # one packed grid, trimmed to the longest report
    assert loss > 0 and model.text.blocks[0].attn.q_proj.weight.grad is not None


def test_forward_embeds_fast_equals_plain(tiny_model, tokenizer):
    ids = tokenizer(REPORTS)
    embeds = tiny_model.text.token_embedding(ids).detach()
    mask = (torch.arange(ids.shape[1]) <= ids.argmax(-1)[:, None]).long()
    with torch.no_grad():
        fast = tiny_model.text.forward_embeds(embeds, mask)
        plain = tiny_model.text.forward_reference(ids)
    assert torch.allclose(fast, plain, atol=1e-5)


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
    common.copy_open_clip_text(ours.text, ref)
    ids = tokenizer(REPORTS)
    with torch.no_grad():
        expected = ref.encode_text(ids, normalize=True)
        fast = ours.encode_text(ids)
        plain = torch.nn.functional.normalize(ours.text.forward_reference(ids), dim=-1)
    assert (fast - expected).abs().max() < 1e-5
    assert (plain - expected).abs().max() < 1e-5
