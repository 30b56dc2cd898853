"""Core model: architectures match open_clip, forward/backward, packed text path vs the plain one, save/load."""

from __future__ import annotations

import json
import math

import open_clip
import pytest
import torch

import medclip
from medclip.errors import CheckpointError, ConfigError, MissingFileError

REPORTS = [
    "no acute cardiopulmonary abnormality.",
    "the heart is normal in size. the mediastinum is unremarkable. there is a small left pleural effusion "
    "with adjacent atelectasis. no pneumothorax. degenerative changes of the thoracic spine.",
    "right upper lobe opacity concerning for pneumonia.",
    "stable cardiomegaly. mild pulmonary vascular congestion without frank edema.",
    "clear lungs.",
]


@pytest.mark.parametrize("name", ["RN50", "RN101", "ViT-B-32", "ViT-B-16", "ViT-L-14"])
@pytest.mark.slow
def test_parameter_counts_match_open_clip(name):
    ours = medclip.create_model(name, device="meta")
    ref = open_clip.create_model(name, device="meta")
    n_ours = sum(p.numel() for p in ours.parameters())
    n_ref = sum(p.numel() for p in ref.parameters())
    assert abs(n_ours - n_ref) / n_ref < 1e-3, (n_ours, n_ref)
    assert sum(p.numel() for p in ours.text.parameters()) == sum(
        p.numel() for name_, p in ref.named_parameters() if not name_.startswith("visual.") and name_ != "logit_scale"
    )


def test_architecture_sizes_follow_clip():
    vit_l = medclip.get_model_config("ViT-L-14")
    assert (vit_l.embed_dim, vit_l.text.width, vit_l.text.heads, vit_l.text.layers) == (768, 768, 12, 12)
    rn50 = medclip.get_model_config("RN50")
    assert (rn50.embed_dim, rn50.text.width, rn50.text.heads, rn50.text.context_length) == (1024, 512, 8, 77)
    assert set(medclip.list_models()) >= {"RN50", "RN101", "ViT-B-32", "ViT-B-16", "ViT-L-14", "tiny-vit"}


def test_temperature_init_and_clamp():
    model = medclip.create_model("tiny-vit")
    assert math.isclose(float(model.get_logit_scale().detach()), 1 / 0.07, rel_tol=1e-6)
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    assert math.isclose(float(model.get_logit_scale().detach()), 100.0, rel_tol=1e-6)


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-rn"])
@pytest.mark.slow
def test_tiny_model_forward_backward(name, tokenizer):
    torch.manual_seed(0)
    model = medclip.create_model(name)
    images = torch.randn(4, 1, 64, 64)
    out = model(images, tokenizer(REPORTS[:4]))
    assert set(out) == {"image_features", "text_features", "logit_scale"}
    assert out["image_features"].shape == out["text_features"].shape == (4, 64)
    assert torch.allclose(out["image_features"].norm(dim=-1), torch.ones(4), atol=1e-5)
    loss = medclip.clip_loss(out["image_features"], out["text_features"], out["logit_scale"])
    loss.backward()
    for pname, param in model.named_parameters():
        if param.requires_grad and "token_embedding" not in pname:
            assert param.grad is not None, pname
            assert param.grad.shape == param.shape and torch.isfinite(param.grad).all(), pname
    assert model.logit_scale.grad is not None and model.logit_scale.grad != 0


def test_loss_equals_open_clip():
    torch.manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(64, 32, dtype=torch.float64), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(64, 32, dtype=torch.float64), dim=-1)
    scale = torch.tensor(14.3, dtype=torch.float64)
    ours = medclip.clip_loss(img, txt, scale)
    ref = open_clip.loss.ClipLoss()(img, txt, scale)
    assert abs(float(ours) - float(ref)) < 1e-6
    assert float(medclip.clip_loss(img, img, scale)) < float(ours)  # matched pairs give a lower loss


def test_packed_text_path_equals_plain_reference_on_77_positions(tiny_model, tokenizer):
    ids = tokenizer(REPORTS)
    eos = ids.argmax(-1)
    with torch.no_grad():
        reference = tiny_model.text.forward_reference(ids)  # every one of the 77 positions, no packing
        packed = tiny_model.text(ids)
    assert ids.shape[1] == 77 and int(eos.max()) + 1 < 77
    assert reference.abs().max() > 0.1  # a real embedding, not zeros
    assert torch.allclose(packed, reference, atol=1e-5)


def test_forward_embeds_equals_ids(tiny_model, tokenizer):
    ids = tokenizer(REPORTS[:3])
    with torch.no_grad():
        embeds = tiny_model.text.token_embedding(ids)
        mask = (torch.arange(77)[None] <= ids.argmax(-1)[:, None]).long()
        via_embeds = tiny_model.encode_text_embeds(embeds, mask)
        via_ids = tiny_model.encode_text(ids)
    assert torch.allclose(via_embeds, via_ids, atol=1e-6)


@pytest.mark.slow
def test_save_load_round_trip(tmp_path, tiny_model, tokenizer):
    tiny_model.save_pretrained(tmp_path / "m")
    loaded = medclip.from_pretrained(str(tmp_path / "m")).eval()
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    assert meta["medclip_version"] == medclip.__version__
    assert meta["model"]["vision"]["in_chans"] == 1 and len(meta["model"]["vision"]["mean"]) == 1
    images, ids = torch.randn(2, 1, 64, 64), tokenizer(REPORTS[:2])
    with torch.no_grad():
        a, b = tiny_model(images, ids), loaded(images, ids)
    assert torch.equal(a["image_features"], b["image_features"])
    assert torch.equal(a["text_features"], b["text_features"])


@pytest.mark.slow
def test_corrupt_and_mismatched_weights_give_clear_errors(tmp_path, tiny_model):
    folder = tmp_path / "m"
    tiny_model.save_pretrained(folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt"):
        medclip.from_pretrained(str(folder))

    other = medclip.create_model("tiny-vit", embed_dim=32)
    other.save_pretrained(tmp_path / "other")
    (folder / "model.safetensors").write_bytes((tmp_path / "other" / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="shape mismatch.*text.text_projection.weight"):
        medclip.from_pretrained(str(folder))

    with pytest.raises(MissingFileError, match="config.json"):
        medclip.from_pretrained(str(tmp_path / "nowhere"))


def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ConfigError, match="unknown config key 'vision.patchsize'"):
        medclip.get_model_config("ViT-B-32", vision={"patchsize": 16})
    with pytest.raises(ConfigError, match="text.act must be one of"):
        medclip.get_model_config("ViT-B-32", text={"act": "relu6"})
    with pytest.raises(ConfigError, match="unknown model 'ViT-Q-99'"):
        medclip.create_model("ViT-Q-99")
    with pytest.raises(ConfigError, match="vision.mean needs 1 values"):
        medclip.get_model_config("tiny-vit", vision={"mean": [0.5, 0.5, 0.5]})


def test_grayscale_stem_and_wrong_image_shape(tiny_model):
    rgb = medclip.create_model("tiny-vit", vision={"in_chans": 3})
    assert rgb.config.vision.mean == list(medclip.config.OPENAI_MEAN)
    with pytest.raises(ConfigError, match=r"\(B, 1, H, W\)"):
        tiny_model.encode_image(torch.randn(2, 3, 64, 64))


def test_quick_gelu_is_used_when_configured():
    model = medclip.create_model("tiny-vit", text={"act": "quick_gelu"}, vision={"act": "quick_gelu"})
    assert type(model.text.blocks[0].mlp.act).__name__ == "QuickGELU"
    assert "QuickGELU" in type(model.visual.trunk.blocks[0].mlp.act).__name__
