"""SigLIP / MedSigLIP: a tiny random-weight transformers ``SiglipModel`` (SentencePiece tokenizer) saved with
``save_pretrained``, converted by ``medclip convert``, equals transformers' features and logits within 1e-5."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import medclip
from medclip.cli import main
from medclip.errors import ConfigError, MissingFileError
from medclip.interop.formats import load_model

TOL = 1e-5
CORPUS = ["no acute cardiopulmonary process", "small left pleural effusion", "the heart is enlarged",
          "right lower lobe opacity", "a chest x-ray of a patient", "pneumothorax on the left side"] * 20


def _features(out) -> torch.Tensor:
    return out if torch.is_tensor(out) else out.pooler_output


def _siglip_folder(tmp_path):
    import sentencepiece as spm
    from test_interop_zoo import randomise
    from transformers import SiglipConfig, SiglipModel, SiglipTokenizer

    (tmp_path / "corpus.txt").write_text("\n".join(CORPUS))
    spm.SentencePieceTrainer.train(input=str(tmp_path / "corpus.txt"), model_prefix=str(tmp_path / "spiece"),
                                   vocab_size=60, hard_vocab_limit=False, model_type="unigram",
                                   minloglevel=2)
    folder = tmp_path / "medsiglip"
    tokenizer = SiglipTokenizer(str(tmp_path / "spiece.model"), model_max_length=16)
    text = dict(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=16, projection_size=48)
    vision = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=3, image_size=32,
                  patch_size=8)
    torch.manual_seed(0)
    model = randomise(SiglipModel(SiglipConfig(text_config=text, vision_config=vision)), seed=5)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, model.eval(), tokenizer


def test_siglip_folder_matches_transformers(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parent))
    folder, reference, tokenizer = _siglip_folder(tmp_path)
    assert main(["convert", str(folder), "--output", str(tmp_path / "out")]) == 0
    ours = medclip.from_pretrained(str(tmp_path / "out")).eval()
    meta = json.loads((tmp_path / "out" / "config.json").read_text())
    assert meta["converted_from"]["format"] == "siglip" and meta["model"]["text"]["attention_mask"] is False
    prompts = ["small left pleural effusion", "the heart is enlarged", "no acute process"]
    ids = medclip.get_tokenizer(ours.config)(prompts)
    expected_ids = tokenizer(prompts, padding="max_length", truncation=True, max_length=16,
                             return_tensors="pt").input_ids
    assert torch.equal(ids, expected_ids)  # padded to max: SigLIP pools the last position
    image = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref_img = _features(reference.get_image_features(pixel_values=image))
        ref_txt = _features(reference.get_text_features(input_ids=ids))
        img, txt = ours.encode_image(image, normalize=False), ours.encode_text(ids, normalize=False)
        assert ref_img.abs().mean() > 1e-2 and ref_txt.abs().mean() > 1e-2
        torch.testing.assert_close(img, ref_img, rtol=0, atol=TOL)
        torch.testing.assert_close(txt, ref_txt, rtol=0, atol=TOL)
        # CoOp's path (word embeddings in) gives the same text embedding as the ids
        embeds = ours.text.token_embedding(ids)
        from_embeds = ours.encode_text_embeds(embeds, torch.ones_like(ids), normalize=False)
        torch.testing.assert_close(from_embeds, ref_txt, rtol=0, atol=TOL)
        ref_logits = reference(input_ids=ids, pixel_values=image).logits_per_image
        out = ours(image, ids)
        logits = out["logit_scale"] * out["image_features"] @ out["text_features"].T + out["logit_bias"]
    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=150 * TOL)
    assert abs(float(out["logit_scale"]) - 150) < 1e-3 and abs(float(out["logit_bias"]) + 7.3) < 1e-6
    assert ours.config.vision.timm_model == "vit_base_patch16_siglip_224" and ours.config.vision.mean == [0.5] * 3


def test_siglip_bad_settings_are_one_line(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parent))
    folder, _, _ = _siglip_folder(tmp_path)
    (folder / "spiece.model").rename(tmp_path / "spiece.moved")  # a folder copied without its tokenizer
    with pytest.raises(MissingFileError, match="spiece.model"):
        load_model(str(folder))
    (tmp_path / "spiece.moved").rename(folder / "spiece.model")
    config = json.loads((folder / "config.json").read_text())
    config["vision_config"]["hidden_act"] = "relu"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="hidden_act relu"):
        load_model(str(folder))


def test_siglip_zero_shot_scoring_uses_the_bias(tmp_path, monkeypatch):
    import torch.nn.functional as F

    from medclip.eval import prompts as P
    from medclip.eval.zeroshot import ZeroShotClassifier

    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parent))
    folder, _, _ = _siglip_folder(tmp_path)
    model = load_model(str(folder)).model
    tokenizer = medclip.get_tokenizer(model.config)
    feats = F.normalize(torch.randn(4, model.config.embed_dim, generator=torch.Generator().manual_seed(0)), dim=-1)
    scale, bias = float(model.get_logit_scale()), float(model.logit_bias)
    with torch.no_grad():
        enc = F.normalize(model.encode_text(tokenizer(["pleural effusion", "enlarged heart"])), dim=-1)
    multi = P.parse_class_file({"task": "multi", "classes": {"effusion": ["pleural effusion"],
                                                             "cardiomegaly": ["enlarged heart"]}})
    probs = ZeroShotClassifier(model, multi, tokenizer).predict_proba(feats)
    np.testing.assert_allclose(probs, torch.sigmoid(scale * feats @ enc.T + bias).numpy(), atol=1e-5)
    single = P.parse_class_file({"classes": {"effusion": ["pleural effusion"], "cardiomegaly": ["enlarged heart"]}})
    probs = ZeroShotClassifier(model, single, tokenizer).predict_proba(feats)
    np.testing.assert_allclose(probs, torch.softmax(scale * feats @ enc.T, dim=1).numpy(), atol=1e-5)
