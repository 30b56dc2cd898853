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
