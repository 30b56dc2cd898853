"""Schedules and validation at scale: warm-up in pairs (independent of the number of processes), a warning
when warm-up takes half the run, validation every K steps on a fixed capped subset."""

from __future__ import annotations

import csv
import logging

import pytest
from conftest import demo_recipe_dict

from medclip.errors import ConfigError
from medclip.train.config import TrainConfig, recipe_from_dict
from medclip.train.loop import train

# 30 training pairs of the demo corpus fixture: batch 6 = 5 steps per epoch, batch 8 = 3


def _lrs(run_dir) -> dict[int, float]:
    with open(run_dir / "metrics.csv", newline="", encoding="utf-8") as f:
        return {int(r["step"]): float(r["lr"]) for r in csv.DictReader(f) if r["lr"]}


@pytest.mark.slow
def test_warmup_in_pairs_becomes_steps_of_the_global_batch(demo_corpus, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="medclip")
    spec = demo_recipe_dict(demo_corpus, batch_size=6, epochs=2, warmup=0, warmup_samples=18, log_every=1,
                            eval_every=0, lr=1e-3)
    train(recipe_from_dict(spec), str(tmp_path / "a"), max_steps=3)
    lrs = _lrs(tmp_path / "a")  # lr after step s is the lr of step s+1: 18 pairs / 6 per step = 3 warm-up steps
    assert lrs[1] == pytest.approx(1e-3 * 2 / 3) and lrs[2] == pytest.approx(1e-3)
    assert "warm-up" not in caplog.text
    spec["train"]["warmup_samples"] = 30  # 5 of the 10 steps
    train(recipe_from_dict(spec), str(tmp_path / "b"), max_steps=1)
    assert "the lr warm-up takes 5 of the run's 10 steps" in caplog.text


@pytest.mark.slow
def test_validation_every_k_steps_on_a_fixed_capped_subset(demo_corpus, tmp_path):
    spec = demo_recipe_dict(demo_corpus, batch_size=6, epochs=3, eval_every=0, eval_every_steps=2, val_max_pairs=5,
                            log_every=1, max_samples=27)  # in pairs: ceil(27 / 6) = 5 of the 15 steps of 3 epochs
    result = train(recipe_from_dict(spec), str(tmp_path))
    assert result["step"] == result["planned_steps"] == 5 and result["stopped_by"] is None
    with open(tmp_path / "metrics.csv", newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["val_loss"]]
    assert [int(r["step"]) for r in rows] == [2, 4, 5]  # every 2 steps, and at the end
    assert result["val_n"] == 5
    with pytest.raises(ConfigError, match="val_max_pairs"):
        TrainConfig(val_max_pairs=0)
