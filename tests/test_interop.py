"""Interop parity: HF CLIPModel and open_clip models (random weights, tiny sizes) saved by those libraries and
loaded by medclip give the same embeddings; loader errors are one clear line."""

from __future__ import annotations

import json

import pytest
import torch

import medclip
from medclip.errors import CheckpointError, ConfigError, MissingFileError

TOL = 1e-5


def _ids(vocab: int, length: int, eos_at: list[int]) -> torch.Tensor:
    """Random token ids with EOS (= highest id) at the given positions, zero padding after it."""
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(1, vocab - 2, (len(eos_at), length), generator=gen)
    for row, pos in enumerate(eos_at):
        ids[row, pos] = vocab - 1
        ids[row, pos + 1:] = 0
    return ids


def _features(out) -> torch.Tensor:
    """transformers 5 returns a model output from get_*_features; 4.x returns the tensor."""
    return out if torch.is_tensor(out) else out.pooler_output


def _randomise_batchnorm(model: torch.nn.Module) -> None:
    gen = torch.Generator().manual_seed(2)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=gen) * 0.1)
            module.running_var.copy_(torch.rand(module.num_features, generator=gen) + 0.5)
            module.weight.data.copy_(torch.rand(module.num_features, generator=gen) + 0.5)


@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
@pytest.mark.slow
def test_hf_clip_parity(tmp_path, act):
    from transformers import CLIPConfig, CLIPModel

    text = dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=16, eos_token_id=99, bos_token_id=98, pad_token_id=0, hidden_act=act)
    vision = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=3, image_size=32,
                  patch_size=8, hidden_act=act)
    torch.manual_seed(0)
    reference = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=24)).eval()
    reference.save_pretrained(tmp_path)

    ours = medclip.from_hf_clip(str(tmp_path))
    assert ours.config.vision.act == act and ours.config.text.act == act
    image = torch.randn(3, 3, 32, 32)
    ids = _ids(100, 16, [4, 9, 15])
    with torch.no_grad():
        ref_img = _features(reference.get_image_features(pixel_values=image))
        ref_txt = _features(reference.get_text_features(input_ids=ids))
        img, txt = ours.encode_image(image, normalize=False), ours.encode_text(ids, normalize=False)
    assert ref_img.shape == img.shape == (3, 24)
    assert torch.allclose(img, ref_img, atol=TOL) and torch.allclose(txt, ref_txt, atol=TOL)
    assert torch.allclose(ours.logit_scale, reference.logit_scale)
    # negative control: another random model is far away, so the tolerance is meaningful
    torch.manual_seed(1)
    other = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=24)).eval()
    with torch.no_grad():
        assert (_features(other.get_image_features(pixel_values=image)) - img).abs().max() > 1e-2


def _open_clip_model(vision_cfg: dict, quick_gelu: bool):
    import open_clip

    torch.manual_seed(0)
    text_cfg = dict(context_length=77, vocab_size=1000, width=64, heads=1, layers=2)
    model = open_clip.model.CLIP(32, vision_cfg, text_cfg, quick_gelu=quick_gelu)
    _randomise_batchnorm(model)
    return model.eval()


@pytest.mark.parametrize("vision_cfg,model_name", [
    (dict(layers=2, width=128, patch_size=8, image_size=32), "tiny-ViT"),
    (dict(layers=2, width=128, patch_size=8, image_size=32), "tiny-ViT-quickgelu"),
    (dict(layers=[3, 4, 6, 3], width=16, image_size=64), "RN50-narrow"),
])
@pytest.mark.slow
def test_open_clip_parity(tmp_path, vision_cfg, model_name):
    reference = _open_clip_model(vision_cfg, quick_gelu="quickgelu" in model_name)
    path = tmp_path / "open_clip.pt"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}}, path)

    ours = medclip.from_open_clip(str(path), model_name)
    expected_trunk = "resnet50_clip" if model_name.startswith("RN") else "vit_base_patch16_clip_224"
    assert ours.config.vision.timm_model == expected_trunk
    size = vision_cfg["image_size"]
    image = torch.randn(2, 3, size, size)
    ids = _ids(1000, 77, [5, 30])
    with torch.no_grad():
        ref_img, ref_txt = reference.encode_image(image), reference.encode_text(ids)
        img, txt = ours.encode_image(image, normalize=False), ours.encode_text(ids, normalize=False)
        assert torch.allclose(img, ref_img, atol=TOL) and torch.allclose(txt, ref_txt, atol=TOL)
        normed = ours(image, ids)
        assert torch.allclose(normed["image_features"], reference.encode_image(image, normalize=True), atol=TOL)
        assert torch.allclose(normed["logit_scale"], reference.logit_scale.exp())


def test_open_clip_safetensors_and_convert_cli(tmp_path):
    from safetensors.torch import save_file

    from medclip.cli import main

    reference = _open_clip_model(dict(layers=1, width=64, patch_size=16, image_size=32), quick_gelu=True)
    src = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, src)
    out = tmp_path / "converted"
    assert main(["convert", "--from", "open-clip", str(src), "--model-name", "tiny-quickgelu",
                 "--output", str(out)]) == 0
    loaded = medclip.from_pretrained(str(out))
    assert json.loads((out / "config.json").read_text())["converted_from"]["format"] == "open-clip"
    image = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded.encode_image(image), reference.encode_image(image, normalize=True), atol=TOL)


def test_loader_errors_are_one_line(tmp_path, capsys):
    from medclip.cli import main

    with pytest.raises(MissingFileError, match="nope.pt"):
        medclip.from_open_clip(str(tmp_path / "nope.pt"), "ViT-B-32")
    with pytest.raises(MissingFileError, match="config.json"):
        medclip.from_hf_clip(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "siglip"}))
    with pytest.raises(ConfigError, match="siglip"):
        medclip.from_hf_clip(str(tmp_path))
    torch.save({"encoder.weight": torch.zeros(2, 2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not an OpenAI/open_clip CLIP"):
        medclip.from_open_clip(str(tmp_path / "other.pt"), "ViT-B-32")
    # a tensor of the wrong shape is named
    state = _open_clip_model(dict(layers=1, width=64, patch_size=16, image_size=32), False).state_dict()
    state["ln_final.weight"] = torch.ones(65)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"shape mismatch .*text\.ln_final\.weight"):
        medclip.from_open_clip(str(tmp_path / "bad.pt"), "tiny")
    assert main(["convert", "--from", "open-clip", str(tmp_path / "bad.pt"), "--model-name", "tiny",
                 "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "text.ln_final.weight" in err


@pytest.mark.parametrize("vision_cfg", [dict(layers=1, width=64, patch_size=16, image_size=32),
                                        dict(layers=[3, 4, 6, 3], width=16, image_size=64)])
@pytest.mark.slow
def test_openai_clip_trunk_key_map(tmp_path, vision_cfg):
    """vision.trunk_key_map=openai_clip loads just the image trunk of a CLIP checkpoint."""
    reference = _open_clip_model(vision_cfg, quick_gelu=False)
    torch.save(reference.state_dict(), tmp_path / "clip.pt")
    full = medclip.from_open_clip(str(tmp_path / "clip.pt"), "tiny")
    vision = {**medclip.config.to_dict(full.config)["vision"], "trunk_weights": str(tmp_path / "clip.pt"),
              "trunk_key_map": "openai_clip"}
    torch.manual_seed(5)
    trunk_only = medclip.create_model("tiny-vit", embed_dim=full.config.embed_dim, vision=vision).eval()
    image = torch.randn(2, 3, vision_cfg["image_size"], vision_cfg["image_size"])
    with torch.no_grad():
        assert torch.allclose(trunk_only.visual.trunk(image), full.visual.trunk(image), atol=TOL)
