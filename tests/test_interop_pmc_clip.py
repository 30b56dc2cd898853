"""PMC-CLIP: a tiny random-weight replica in its published layouts (one training checkpoint; the three-file
release) converted by ``medclip convert`` equals the reference forward pass (tests/reference/pmc_clip.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import medclip
from medclip.cli import main
from medclip.errors import MissingFileError
from medclip.interop.formats import load_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference.pmc_clip import PMCCLIPReference  # noqa: E402
from test_interop_zoo import _compare, _tiny_bert, randomise  # noqa: E402


@pytest.fixture(scope="module")
def replica(tmp_path_factory):
    from test_interop import _randomise_batchnorm
    from transformers import BertConfig

    tmp = tmp_path_factory.mktemp("pmc")
    _tiny_bert(tmp / "pubmedbert")
    torch.manual_seed(0)
    reference = PMCCLIPReference(BertConfig.from_pretrained(tmp / "pubmedbert"))
    randomise(reference, seed=6)
    _randomise_batchnorm(reference)
    torch.save(reference.published_state(), tmp / "checkpoint.pt")
    three = tmp / "release"
    three.mkdir()
    state = reference.state_dict()
    torch.save({k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")},
               three / "image_encoder(resnet50).pth")
    torch.save({k[len("text_encoder."):]: v for k, v in state.items() if k.startswith("text_encoder.")},
               three / "text_encoder.pth")
    torch.save(state["text_projection"], three / "text_projection_layer.pth")
    return tmp, reference.eval()


@pytest.mark.parametrize("layout", ["checkpoint.pt", "release"])
def test_pmc_clip_matches_reference(replica, layout, tmp_path):
    tmp, reference = replica
    assert main(["convert", str(tmp / layout), "--text-model", str(tmp / "pubmedbert"),
                 "--output", str(tmp_path / "out")]) == 0
    ours = medclip.from_pretrained(str(tmp_path / "out")).eval()
    meta = __import__("json").loads((tmp_path / "out" / "config.json").read_text())
    assert meta["converted_from"]["format"] == "pmc-clip" and ours.config.text.context_length == 77
    ids = medclip.get_tokenizer(ours.config)(["no acute effusion", "the heart is enlarged", "left pleural opacity"])
    assert ids.shape == (3, 77) and (ids[:, 0] == 2).all()
    _compare(ours, reference, torch.randn(2, 3, 64, 64), ids, logit=layout == "checkpoint.pt")
    if layout == "release":  # no temperature in the release: CLIP's initial one, not a made-up value
        assert abs(float(ours.get_logit_scale()) - 1 / 0.07) < 1e-4


def test_pmc_clip_needs_its_bert(replica, tmp_path, capsys):
    tmp, _ = replica
    with pytest.raises(MissingFileError, match="--text-model"):
        load_model(str(tmp / "checkpoint.pt"))
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "image_encoder(resnet50).pth").write_bytes(b"")
    assert main(["convert", str(tmp_path / "partial"), "--output", str(tmp_path / "o")]) == 2
    assert "text_encoder.pth" in capsys.readouterr().err.strip().splitlines()[-1]
