"""The model zoo: tiny random-weight replicas saved in each model's published layout, converted by
``medclip convert`` (format detected), equal to the reference library's forward pass within 1e-5.

Every parameter is randomised before saving (LayerNorm weights and biases too, ``logit_scale`` = ln 150,
``logit_bias`` = −7.3): default inits hide dropped biases and clamps.
"""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

import medclip
from medclip.cli import main
from medclip.errors import CheckpointError, ConfigError, MissingFileError
from medclip.interop.formats import load_model

TOL = 1e-5
PROMPT_WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "no", "acute", "effusion", "left", "right",
                "pleural", "small", "heart", "enlarged", "opacity", "the", "is", "a", "chest", "x", "-", "ray"]


def randomise(model: torch.nn.Module, seed: int = 0, bias: float | None = None) -> torch.nn.Module:
    """Every parameter random (norm weights around 1), logit_scale ln 150, logit_bias (if any) −7.3."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name in ("logit_scale", "logit_bias"):
                continue
            if p.ndim == 1:
                p.copy_(noise * 0.2 + (1.0 if name.endswith("weight") else 0.0))
            else:
                fan_in = p[0].numel() if p.ndim >= 2 else 1
                p.copy_(noise * (0.1 if p.ndim > 2 and p.shape[0] == 1 else fan_in ** -0.5))
        model.logit_scale.fill_(math.log(150))
        if getattr(model, "logit_bias", None) is not None:
            model.logit_bias.fill_(-7.3 if bias is None else bias)
    return model.eval()


def _open_clip_vit(quick_gelu: bool, narrow_heads: bool = True):
    """Tiny open_clip ViT CLIP; ``narrow_heads``: head widths only the config knows (32 and 24, not 64)."""
    import open_clip

    vision = dict(layers=2, width=64, patch_size=8, image_size=32, **({"head_width": 32} if narrow_heads else {}))
    text = dict(context_length=20, vocab_size=300, width=48 if narrow_heads else 64, heads=2 if narrow_heads else 1,
                layers=2)
    model = open_clip.model.CLIP(24, vision, text, quick_gelu=quick_gelu)
    cfg = {"embed_dim": 24, "quick_gelu": quick_gelu, "vision_cfg": vision, "text_cfg": text}
    return randomise(model), cfg


def _write_hub(folder, model, model_cfg: dict, weights: str = "safetensors", preprocess: dict | None = None):
    """The layout of open_clip's ``save_for_hf``: open_clip_config.json + weights (+ tokenizer files)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    preprocess = preprocess or {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3], "interpolation": "bicubic",
                                "resize_mode": "shortest"}
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess}))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if weights == "safetensors":
        save_file(state, folder / "open_clip_model.safetensors")
    else:
        torch.save(state, folder / "open_clip_pytorch_model.bin")
    (folder / "README.md").write_text("---\nlicense: mit\ntags: [clip]\n---\n# tiny\n")


def _compare(ours, reference, image, ids_ours, ids_ref=None, logit: bool = True):
    """Unnormalised embeddings and (``logit``) the single-prompt logit equal the reference's."""
    ids_ref = ids_ours if ids_ref is None else ids_ref
    with torch.no_grad():
        ref_img, ref_txt = reference.encode_image(image), reference.encode_text(ids_ref)
        img, txt = ours.encode_image(image, normalize=False), ours.encode_text(ids_ours, normalize=False)
        assert ref_img.abs().mean() > 1e-2 and ref_txt.abs().mean() > 1e-2  # not trivially small
        torch.testing.assert_close(img, ref_img, rtol=0, atol=TOL)
        torch.testing.assert_close(txt, ref_txt, rtol=0, atol=TOL)
        if not logit:
            return
        ref_logit = reference.logit_scale.exp() * torch.nn.functional.normalize(ref_img[:1], dim=-1) @ \
            torch.nn.functional.normalize(ref_txt[:1], dim=-1).T
        out = ours(image[:1], ids_ours[:1])
        logit = out["logit_scale"] * out["image_features"] @ out["text_features"].T
        torch.testing.assert_close(logit, ref_logit, rtol=0, atol=TOL * 150)


@pytest.mark.slow
def test_bare_state_dict_needs_a_model_name(tmp_path, capsys):
    reference, _ = _open_clip_vit(quick_gelu=True, narrow_heads=False)  # a bare file says no head width
    torch.save(reference.state_dict(), tmp_path / "chexzero.pt")
    with pytest.raises(CheckpointError, match="--model-name X-quickgelu"):
        medclip.from_open_clip(str(tmp_path / "chexzero.pt"))
    assert main(["convert", str(tmp_path / "chexzero.pt"), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "chexzero.pt" in err and "ViT-B-32-quickgelu" in err
    assert main(["convert", str(tmp_path / "chexzero.pt"), "--model-name", "tiny-quickgelu",
                 "--output", str(tmp_path / "out")]) == 0
    ours = medclip.from_pretrained(str(tmp_path / "out")).eval()
    ids = torch.randint(1, 299, (2, 20), generator=torch.Generator().manual_seed(0))
    ids[:, 12], ids[:, 13:] = 299, 0
    _compare(ours, reference, torch.randn(2, 3, 32, 32), ids)
    assert abs(float(ours.get_logit_scale()) - 150) < 1e-3  # the clamp was raised, not the checkpoint clipped


@pytest.mark.parametrize("weights", ["safetensors", "bin"])
@pytest.mark.slow
def test_open_clip_hub_folder_matches_open_clip(tmp_path, weights):
    import open_clip

    reference, cfg = _open_clip_vit(quick_gelu=True)
    _write_hub(tmp_path / "hub", reference, cfg, weights)
    official = open_clip.create_model(f"local-dir:{tmp_path / 'hub'}").eval()  # the library's own loader
    assert main(["convert", str(tmp_path / "hub"), "--output", str(tmp_path / "out")]) == 0
    ours = medclip.from_pretrained(str(tmp_path / "out")).eval()
    assert ours.config.vision.act == "quick_gelu" and ours.config.vision.mean == [0.5, 0.4, 0.3]
    ids = torch.randint(1, 299, (3, 20), generator=torch.Generator().manual_seed(1))
    ids[:, 15], ids[:, 16:] = 299, 0
    _compare(ours, official, torch.randn(3, 3, 32, 32), ids)
    meta = json.loads((tmp_path / "out" / "config.json").read_text())
    assert meta["converted_from"]["format"] == "open-clip-hub" and meta["preprocess"]["resize_mode"] == "shortest"
    card = (tmp_path / "out" / "README.md").read_text()
    assert "sha256" in card and "license (from the source's model card): mit" in card


def _tiny_bert(folder):
    from transformers import BertConfig, BertModel, BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(PROMPT_WORDS) + "\n")
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    config = BertConfig(vocab_size=len(PROMPT_WORDS), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=256)
    BertModel(config).save_pretrained(folder)


def _biomedclip_replica(tmp_path):
    """A BiomedCLIP-layout hub folder (timm ViT + BERT, mlp projection, CLS pooling, 256 tokens); timm's 6-block
    test_vit stands in for vit_base_patch16_224 (same VisionTransformer class and keys)."""
    import open_clip

    bert = tmp_path / "pubmedbert"
    _tiny_bert(bert)
    cfg = {"embed_dim": 24,
           "vision_cfg": {"timm_model_name": "test_vit", "timm_model_pretrained": False,
                          "timm_pool": "", "timm_proj": "linear", "image_size": 160},
           "text_cfg": {"hf_model_name": str(bert), "hf_tokenizer_name": str(bert), "hf_proj_type": "mlp",
                        "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": 256}}
    reference = randomise(open_clip.model.CustomTextCLIP(24, cfg["vision_cfg"], cfg["text_cfg"]), seed=3)
    hub = tmp_path / "biomedclip"
    _write_hub(hub, reference, cfg, preprocess={"mean": [0.48145466, 0.4578275, 0.40821073],
                                                "std": [0.26862954, 0.26130258, 0.27577711]})
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        if (bert / name).exists():
            shutil.copy(bert / name, hub / name)
    return hub, bert, cfg


@pytest.mark.slow
def test_biomedclip_layout_converts_exactly_and_is_self_contained(tmp_path, capsys):
    import open_clip

    hub, bert, cfg = _biomedclip_replica(tmp_path)
    official = open_clip.create_model(f"local-dir:{hub}").eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{hub}")
    # the published config names the encoder by hub id: refused in one line until --text-model is given
    cfg["text_cfg"]["hf_model_name"] = cfg["text_cfg"]["hf_tokenizer_name"] = "microsoft/BiomedNLP-BiomedBERT"
    (hub / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    capsys.readouterr()  # drop transformers' progress bars written so far
    assert main(["convert", str(hub), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and "--text-model" in err.splitlines()[-1] and "open_clip_config.json" in err
    assert main(["convert", str(hub), "--from", "biomedclip", "--text-model", str(bert),
                 "--output", str(tmp_path / "out")]) == 0
    shutil.rmtree(bert)  # the converted folder must not need the BERT folder any more
    shutil.move(str(tmp_path / "out"), str(tmp_path / "moved"))
    ours = medclip.from_pretrained(str(tmp_path / "moved")).eval()
    assert ours.config.text.proj == "mlp" and ours.config.text.pooling == "cls"
    prompts = ["no acute effusion", "the heart is enlarged", "small left pleural opacity"]
    ids = medclip.get_tokenizer(ours.config)(prompts)
    assert ids.shape == (3, 256) and torch.equal(ids, tokenizer(prompts))
    _compare(ours, official, torch.randn(2, 3, 160, 160), ids)


def test_zoo_errors_are_one_line(tmp_path):
    with pytest.raises(MissingFileError, match="nothing is downloaded"):
        load_model(str(tmp_path / "missing"))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ConfigError, match="unknown model format"):
        load_model(str(tmp_path / "notes.txt"))
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ConfigError, match="'bert' model"):
        load_model(str(tmp_path / "bert"))
    reference, cfg = _open_clip_vit(quick_gelu=False)
    _write_hub(tmp_path / "hub", reference, cfg)
    with open(tmp_path / "hub" / "open_clip_model.safetensors", "r+b") as f:  # truncated download
        f.truncate(1000)
    with pytest.raises(CheckpointError, match="open_clip_model.safetensors.*corrupt"):
        load_model(str(tmp_path / "hub"))
    cfg["vision_cfg"]["head_width"] = 48  # config that does not fit the weights
    _write_hub(tmp_path / "hub2", reference, cfg)
    with pytest.raises((CheckpointError, ConfigError), match="hub2"):
        load_model(str(tmp_path / "hub2"))


@pytest.mark.parametrize("converter, prefix", [("medclip_ryanwang.convert_medclip_state", "text_model.model."),
                                               ("pmc_clip.convert_pmc_clip_state", "text_encoder."),
                                               ("open_clip_hub._custom_text_state", "text.transformer."),
                                               ("siglip.convert_siglip_state", "text_model.")])
def test_hf_text_keys_are_mapped_alike_by_every_converter(converter, prefix):
    """One rule for a saved HF text encoder (clip_common.hf_text_entry): its own keys go under text.model., the id
    buffers older transformers saved and BERT's unused NSP pooler are dropped, anything else unknown is refused."""
    import importlib

    module, name = converter.split(".")
    convert = getattr(importlib.import_module(f"medclip.interop.{module}"), name)
    weight = torch.ones(2, 2)
    state = {prefix + "embeddings.position_ids": torch.arange(4)[None], prefix + "pooler.dense.weight": weight,
             prefix + "embeddings.token_type_ids": torch.zeros(1, 4, dtype=torch.long),
             prefix + "encoder.layer.0.attention.self.query.weight": weight}
    assert convert(state, "src") == {"text.model.encoder.layer.0.attention.self.query.weight": weight}
    with pytest.raises(CheckpointError, match="src: unexpected keys.*stray"):
        convert({**state, "stray": weight}, "src")
