"""MedCLIP-ResNet (Wang et al.): a tiny random-weight replica saved as upstream's ``pytorch_model.bin`` and
converted by ``medclip convert --from medclip-resnet`` equals the reference forward pass
(tests/reference/medclip.py), including its batch-dependent text pooling over padding."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

import medclip
from medclip.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference.medclip import MedCLIPReference  # noqa: E402
from test_interop_zoo import PROMPT_WORDS, randomise  # noqa: E402

TOL = 1e-5


def _bert(folder):
    from transformers import BertConfig, BertModel, BertTokenizer

    folder.mkdir(parents=True)
    (folder / "vocab.txt").write_text("\n".join(PROMPT_WORDS) + "\n")
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    config = BertConfig(vocab_size=len(PROMPT_WORDS), hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(folder)
    return config


def test_medclip_resnet_matches_reference(tmp_path):
    from test_interop import _randomise_batchnorm

    config = _bert(tmp_path / "bio_clinicalbert")
    torch.manual_seed(0)
    reference = randomise(MedCLIPReference(config), seed=7)
    _randomise_batchnorm(reference)
    with torch.no_grad():
        reference.logit_scale.fill_(math.log(150))  # above upstream's clamp: converted models clamp the same
    (tmp_path / "medclip-resnet").mkdir()
    torch.save(reference.state_dict(), tmp_path / "medclip-resnet" / "pytorch_model.bin")
    assert main(["convert", str(tmp_path / "medclip-resnet"), "--from", "medclip-resnet", "--text-model",
                 str(tmp_path / "bio_clinicalbert"), "--output", str(tmp_path / "out")]) == 0
    ours = medclip.from_pretrained(str(tmp_path / "out")).eval()
    reference.eval()
    assert ours.config.vision.mean == pytest.approx([0.5862785803043838] * 3)
    prompts = ["no acute effusion", "the heart is enlarged and a small left pleural opacity", "chest x - ray"]
    tokenizer = medclip.get_tokenizer(ours.config)
    ids = tokenizer(prompts)  # padded to 77; our tower trims to the batch's longest text, as upstream pads
    longest = int((ids != 0).sum(1).max())
    ref_ids, ref_mask = ids[:, :longest], (ids[:, :longest] != 0).long()
    image = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        ref_img, ref_txt = reference.encode_image(image), reference.encode_text(ref_ids, ref_mask)
        img = ours.encode_image(image.repeat(1, 3, 1, 1), normalize=False)
        txt = ours.encode_text(ids, normalize=False)
        torch.testing.assert_close(img, ref_img, rtol=0, atol=TOL)
        torch.testing.assert_close(txt, ref_txt, rtol=0, atol=TOL)
        out = ours(image.repeat(1, 3, 1, 1), ids)
        logits = out["logit_scale"] * out["image_features"] @ out["text_features"].T
        torch.testing.assert_close(logits, reference.logits(image, ref_ids, ref_mask), rtol=0, atol=1e-4)
        # batch dependence is reproduced: alone, the short text is pooled over its own length only
        alone = ours.encode_text(tokenizer(prompts[:1]), normalize=False)
        ref_alone = reference.encode_text(ids[:1, :int((ids[0] != 0).sum())], None)
        torch.testing.assert_close(alone, ref_alone, rtol=0, atol=TOL)
        assert (alone - txt[:1]).abs().max() > 1e-3
    assert abs(float(out["logit_scale"]) - math.exp(4.6052)) < 1e-3


@pytest.mark.parametrize("names", ["transformers5", "transformers4"])
def test_medclip_vit_matches_reference(tmp_path, names):
    from reference.medclip import MedCLIPViTReference
    from transformers import SwinConfig

    config = _bert(tmp_path / "bio_clinicalbert")
    swin = SwinConfig(image_size=224, patch_size=4, embed_dim=16, depths=[1, 2], num_heads=[1, 2], window_size=7,
                      mlp_ratio=2.0)
    torch.manual_seed(0)
    reference = randomise(MedCLIPViTReference(config, swin), seed=9).eval()
    (tmp_path / "medclip-vit").mkdir()
    state = reference.state_dict()
    if names == "transformers4":  # the published checkpoint was saved with transformers 4.x Swin names
        from medclip.interop.medclip_ryanwang import _SWIN_V4

        def old(key):
            for v4, v5 in _SWIN_V4:
                key = key.replace(v5, v4) if key.startswith("vision_model.") else key
            return key

        state = {old(k): v for k, v in state.items()}
        assert any(".attention.self.query." in k for k in state)
    torch.save(state, tmp_path / "medclip-vit" / "pytorch_model.bin")
    assert main(["convert", str(tmp_path / "medclip-vit"), "--from", "medclip-vit", "--text-model",
                 str(tmp_path / "bio_clinicalbert"), "--output", str(tmp_path / "out")]) == 0
    ours = medclip.from_pretrained(str(tmp_path / "out")).eval()
    assert ours.config.vision.hf_config["depths"] == [1, 2] and ours.config.vision.hf_config["window_size"] == 7
    card = (tmp_path / "out" / "README.md").read_text()  # the card names the wrapped Swin, not timm's unused default
    assert "image tower: transformers `swin` (wrapped), 224 px" in card and "timm" not in card
    image = torch.randn(2, 1, 224, 224)
    ids = medclip.get_tokenizer(ours.config)(["no acute effusion", "the heart is enlarged"])
    longest = int((ids != 0).sum(1).max())
    with torch.no_grad():
        torch.testing.assert_close(ours.encode_image(image.repeat(1, 3, 1, 1), normalize=False),
                                   reference.encode_image(image), rtol=0, atol=TOL)
        torch.testing.assert_close(ours.encode_text(ids, normalize=False),
                                   reference.encode_text(ids[:, :longest], (ids[:, :longest] != 0).long()),
                                   rtol=0, atol=TOL)
