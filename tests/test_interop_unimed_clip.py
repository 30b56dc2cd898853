"""UniMed-CLIP: a tiny random-weight replica saved as upstream's checkpoint (``state_dict`` with ``module.``
keys) converted by ``medclip convert`` (format found by its keys) equals the reference forward pass
(tests/reference/unimed_clip.py) within 1e-5."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

import medclip
from medclip.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference.unimed_clip import UniMedCLIPReference  # noqa: E402
from test_interop_zoo import _compare, _tiny_bert, randomise  # noqa: E402


def test_unimed_clip_matches_reference(tmp_path, capsys):
    _tiny_bert(tmp_path / "biomedbert")
    torch.manual_seed(0)
    reference = randomise(UniMedCLIPReference(str(tmp_path / "biomedbert")), seed=8).eval()
    state = {f"module.{k}": v for k, v in reference.state_dict().items()}
    torch.save({"epoch": 10, "state_dict": state}, tmp_path / "unimed_clip_vit_b16.pt")
    capsys.readouterr()
    assert main(["convert", str(tmp_path / "unimed_clip_vit_b16.pt"), "--output", str(tmp_path / "o")]) == 2
    assert "--text-model" in capsys.readouterr().err.strip().splitlines()[-1]
    assert main(["convert", str(tmp_path / "unimed_clip_vit_b16.pt"), "--text-model", str(tmp_path / "biomedbert"),
                 "--output", str(tmp_path / "out")]) == 0
    ours = medclip.from_pretrained(str(tmp_path / "out")).eval()
    assert ours.config.vision.act == "quick_gelu" and ours.config.text.proj == "mlp"
    ids = medclip.get_tokenizer(ours.config)(["no acute effusion", "the heart is enlarged"])
    assert ids.shape == (2, 256)
    _compare(ours, reference, torch.randn(2, 3, 32, 32), ids)
