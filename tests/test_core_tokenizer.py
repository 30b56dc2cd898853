"""The offline CLIP BPE tokenizer equals open_clip's."""

from __future__ import annotations

import open_clip
import torch

import medclip

TEXTS = [
    "PA and lateral chest x-ray: No focal consolidation, pleural effusion, or pneumothorax.",
    "Heart size is mildly enlarged (CTR 0.55). Right-sided PICC terminates at the cavoatrial junction!!",
    "Comparison: 12/03/2019. ET tube 4.5 cm above the carina; NG tube in stomach. &amp; &lt;3",
    "Café-au-lait; résumé; 肺炎 ✓ — naïve",
    "opacity " * 100,
    "",
]


def test_ids_equal_open_clip():
    ours = medclip.get_tokenizer("clip")(TEXTS)
    ref = open_clip.get_tokenizer("ViT-B-32")(TEXTS)
    assert ours.dtype == torch.long and ours.shape == (len(TEXTS), 77)
    assert torch.equal(ours, ref)


def test_truncation_keeps_eos_and_decode_round_trips():
    tok = medclip.get_tokenizer("clip")
    ids = tok(["opacity " * 100, "small left effusion"])
    assert ids[0, -1] == tok.eot_token_id and ids[0].argmax() == 76
    assert tok.decode(ids[1]) == "small left effusion"
    assert tok(["a b"], context_length=5).shape == (1, 5)
