"""Choosing on validation (issue 17): never silently worse than zero-shot, the CLIP-Adapter ratio, the
accuracy threshold, and an external test set (``--test-manifest``)."""

from __future__ import annotations

import logging

import medclip_adapters as ma
import numpy as np
import pandas as pd
import pytest
import torch
from medclip_adapters.selection import MIN_VAL_PER_CLASS, choose_threshold, selection_score

pytestmark = pytest.mark.usefixtures("one_thread")


def zero_shot_friendly(model, cache, n_per_class: dict, flip_train: bool, seed: int = 0):
    """Features near the text target of their class (zero-shot is right); ``flip_train`` swaps the training
    labels, so a method fitted on them is wrong."""
    task = ma.Task(classes=["normal", "pneumonia"], kind="single")
    targets = ma.create_method("zeroshot", model, task).text_features()
    g = torch.Generator().manual_seed(seed)
    frames = {}
    for split, n in n_per_class.items():
        y = np.arange(2 * n) % 2
        feats = targets[y] + 0.05 * torch.randn(2 * n, targets.shape[1], generator=g)
        images = [f"/synthetic/sel{seed}/{split}{i}.png" for i in range(2 * n)]
        cache.put(model, images, feats)
        labels = 1 - y if (flip_train and split == "train") else y
        frames[split] = pd.DataFrame({"image": images, "label": labels, "patient_id": images})
    return task, frames


@pytest.mark.parametrize("val_per_class", [MIN_VAL_PER_CLASS, 2])
def test_a_method_below_zero_shot_on_validation(tiny_model, val_per_class, caplog, tmp_path):
    cache = ma.FeatureCache()
    task, f = zero_shot_friendly(tiny_model, cache, {"train": 16, "val": val_per_class, "test": 30}, flip_train=True)
    zero = ma.create_method("zeroshot", tiny_model, task, cache=cache).fit(f["train"]).predict_proba(f["test"])
    with caplog.at_level(logging.INFO, logger="medclip_adapters"):
        probe = ma.create_method("probe", tiny_model, task, cache=cache, C=10.0).fit(f["train"], f["val"])
    assert probe.selected["zeroshot_val_score"] > probe.selected["val_score"]
    probs = probe.predict_proba(f["test"])
    if val_per_class >= MIN_VAL_PER_CLASS:  # enough validation: the zero-shot starting point predicts
        assert probe.selected["start"] == "zeroshot"
        np.testing.assert_allclose(probs, zero, atol=1e-6)
        probe.save(str(tmp_path / "probe"))
        np.testing.assert_array_equal(ma.load_method(str(tmp_path / "probe"), tiny_model, cache=cache)
                                      .predict_proba(f["test"]), probs)
    else:  # too little to choose on: the fitted method stays, and a warning says it is below zero-shot
        assert "start" not in probe.selected and probe.threshold == 0.5
        assert (probs.argmax(1) != task.labels(f["test"])).mean() > 0.9  # the flipped probe, as fitted
        assert any("below zero-shot" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


def test_a_good_fitted_method_is_kept(tiny_model):
    cache = ma.FeatureCache()
    task, f = zero_shot_friendly(tiny_model, cache, {"train": 16, "val": 8, "test": 20}, flip_train=False, seed=1)
    probe = ma.create_method("probe", tiny_model, task, cache=cache, C=10.0).fit(f["train"], f["val"])
    assert probe.selected["start"] == "fitted"
    assert (probe.predict_proba(f["test"]).argmax(1) == task.labels(f["test"])).mean() == 1.0


def test_threshold_maximises_validation_accuracy():
    task = ma.Task(classes=["normal", "pneumonia"], kind="single")
    p1 = np.array([0.30] * 8 + [0.10] * 8)  # every positive at 0.3, every negative at 0.1: 0.5 misses all positives
    probs, y = np.stack([1 - p1, p1], 1), np.array([1] * 8 + [0] * 8)
    assert choose_threshold(task, probs, y) == 0.3  # among 0.15..0.3 (all perfect) the one nearest 0.5
    multi = ma.Task(classes=["a", "b"], kind="multi")
    assert choose_threshold(multi, np.stack([p1, p1], 1), np.stack([y, y], 1).astype(float)) == 0.3


@pytest.mark.slow
def test_clip_adapter_ratio_is_chosen_on_validation(tiny_model):
    cache = ma.FeatureCache()
    task, f = zero_shot_friendly(tiny_model, cache, {"train": 8, "val": 8, "test": 8}, flip_train=False, seed=2)
    chosen = ma.create_method("clip-adapter", tiny_model, task, cache=cache, epochs=3, lr=0.5).fit(f["train"], f["val"])
    scores = {}
    for ratio in chosen.config.ratios:
        fixed = ma.create_method("clip-adapter", tiny_model, task, cache=cache, epochs=3, lr=0.5, ratio=ratio)
        fixed.fit(f["train"])
        scores[ratio] = selection_score(task, fixed._scores(f["val"]).detach().double().numpy(), task.labels(f["val"]))
    assert chosen.selected["ratio"] == max(scores, key=lambda r: (scores[r], -r))
    few = ma.create_method("clip-adapter", tiny_model, task, cache=cache, epochs=1).fit(f["train"], f["val"].head(4))
    assert few.selected["ratio"] == 0.2  # too little validation: the paper's ratio
    assert float(few.module.adapter.ratio) == pytest.approx(0.2)  # saved with the weights


@pytest.mark.slow
def test_test_manifest_is_the_whole_test_set(shared_data, tmp_path, capsys):
    from medclip.cli import main

    kermany = shared_data / "pneumonia-kermany"
    images = sorted((kermany / "NORMAL").glob("*.jpeg"))[:6] + sorted((kermany / "PNEUMONIA").glob("*.jpeg"))[:6]
    test = pd.DataFrame({"image": [str(p) for p in images], "label": ["NORMAL"] * 6 + ["PNEUMONIA"] * 6})
    test.to_csv(tmp_path / "test.csv", index=False)
    args = ["probe", "--model", "tiny-vit", "--classes", "recipes/classes/pneumonia-kermany.yaml", "--shots", "2",
            "--n-bootstrap", "20", "--cache-dir", str(tmp_path / "cache"), "--no-progress", "--set", "search_steps=1"]
    other = tmp_path / "shots.csv"  # shots from a manifest that holds none of the test images
    pool = sorted((kermany / "NORMAL").glob("*.jpeg"))[10:22] + sorted((kermany / "PNEUMONIA").glob("*.jpeg"))[10:22]
    pd.DataFrame({"image": [str(p) for p in pool], "label": ["NORMAL"] * 12 + ["PNEUMONIA"] * 12}).to_csv(other,
                                                                                                         index=False)
    assert main([*args, "--manifest", str(other), "--test-manifest", str(tmp_path / "test.csv"),
                 "--output", str(tmp_path / "run")]) == 0
    predictions = pd.read_csv(tmp_path / "run" / "predictions.csv")
    assert sorted(predictions["image"]) == sorted(test["image"])  # every test image, nothing else
    split = pd.read_csv(tmp_path / "run" / "split.csv")
    assert not (split["fewshot_split"] == "test").any() and (split["fewshot_split"] == "train").sum() == 4
    assert "on 12 test images" in capsys.readouterr().out
    code = main([*args, "--manifest", str(tmp_path / "test.csv"), "--test-manifest", str(tmp_path / "test.csv"),
                 "--output", str(tmp_path / "overlap")])
    err = capsys.readouterr().err
    assert code == 2 and "drawn as shots" in err and len(err.strip().splitlines()) == 1
