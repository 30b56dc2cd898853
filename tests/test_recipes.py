"""Every shipped recipe loads through the real recipe loader and builds its model; bad keys are one-line errors.

Full-size models are built on ``torch.device("meta")`` (shapes only, no memory), so this stays fast;
recipes with pretrained parts (``trunk_weights``, ``hf_model_dir``) are small and load them on CPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

import medclip
from medclip.cli import main as cli_main
from medclip.train.config import load_recipe, recipe_from_dict

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))


def test_the_issue_recipes_are_shipped():
    names = {p.stem for p in RECIPES}
    assert {"demo", "covid-notes", "vit-b-16-cxr", "rn50-cxr"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
@pytest.mark.slow
def test_recipe_loads_and_builds(path, monkeypatch):
    monkeypatch.chdir(REPO)  # recipe paths are relative to the repository root
    recipe = load_recipe(path)
    assert recipe_from_dict(recipe.to_dict()).to_dict() == recipe.to_dict()  # the saved form re-loads
    cfg, vision = recipe.train, recipe.model.vision
    pretrained = bool(vision.trunk_weights or recipe.model.text.hf_model_dir)
    model = medclip.create_model(recipe.model, device=None if pretrained else torch.device("meta"))
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    size, device = vision.image_size, next(model.parameters()).device
    image = torch.zeros(2, vision.in_chans, size, size, device=device)
    with torch.no_grad():
        features = model.encode_image(image)
    assert features.shape == (2, recipe.model.embed_dim)
    batch = cfg.batch_size
    assert cfg.gradcache_chunk < batch, "a GradCache chunk must be smaller than the batch it splits"
    if cfg.device == "cuda":  # the full-size GPU recipes
        assert cfg.loss == "tiled" and cfg.gradcache_chunk and cfg.grad_checkpointing and cfg.precision == "auto"
        assert [s.lower() for s in recipe.data.sections] == ["impression", "findings"]
        assert sum(p.numel() for p in model.parameters()) > 50e6
    else:  # CPU recipes train in minutes: small models, exact fp32 on CPU
        assert sum(p.numel() for p in model.parameters()) < 30e6 and cfg.precision in ("auto", "fp32")
        if not recipe.data.demo:
            assert (REPO / recipe.data.manifest).resolve().is_file(), recipe.data.manifest


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_bad_key_in_a_recipe_is_a_one_line_error(path, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    data = yaml.safe_load(path.read_text())
    data["train"]["learning_rate"] = 1e-3  # a typo of train.lr
    bad = tmp_path / path.name
    bad.write_text(yaml.safe_dump(data))
    assert cli_main(["pretrain", "--recipe", str(bad), "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train.learning_rate" in err and str(bad) in err
    # the same typo through --set on the shipped file
    assert cli_main(["pretrain", "--recipe", str(path), "--set", "data.batchsize=4",
                     "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "data.batchsize" in err and "Traceback" not in err


def test_gpu_recipe_on_a_machine_without_cuda_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli_main(["pretrain", "--recipe", "recipes/vit-b-16-cxr.yaml", "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train.device=cuda" in err and "--set train.device=cpu" in err
    run = tmp_path / "run"  # --output is checked (created) up front; nothing is written into it
    assert not run.exists() or not any(run.iterdir())
