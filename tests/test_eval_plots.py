"""What the clinicians read: counts on the figures, accuracy beside its baselines, confident right/wrong calls."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medclip.eval.calibration import reliability_bins
from medclip.eval.metrics import evaluate
from medclip.eval.plots import plot_reliability, plot_roc
from medclip.eval.prompts import parse_class_file
from medclip.eval.zeroshot import ZeroShotResult, accuracy_table, confident_examples


def test_roc_legend_states_positives_and_negatives_and_figures_have_titles():
    y = np.array([0, 1, 1, 0, 1, 0, 0, 0, 1, 0])
    p1 = np.linspace(0.1, 0.9, 10)
    fig = plot_roc(y, np.stack([1 - p1, p1], 1), ["normal", "pneumonia"], "single", evaluate(
        y, np.stack([1 - p1, p1], 1), ["normal", "pneumonia"], n_bootstrap=20), n_bootstrap=20)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any("pneumonia (4 positive / 6 negative)" in t for t in legend)
    assert fig.axes[0].get_title()


def test_reliability_diagram_labels_each_point_with_its_count():
    conf = np.array([0.05, 0.1, 0.12, 0.5, 0.55, 0.9])
    bins = reliability_bins(conf, np.array([0, 0, 1, 1, 0, 1]), n_bins=10)
    fig = plot_reliability({"zero-shot": bins})
    counts = [int(t.get_text()) for t in fig.axes[0].texts]
    assert counts == [int(n) for n in bins["count"] if n > 0] == [2, 1, 1, 1, 1]  # right-closed bins of width 0.1
    assert "per bin" in fig.axes[0].get_title()


@pytest.fixture()
def result() -> ZeroShotResult:
    """Ten images, 70% pneumonia; the model calls everything pneumonia with rising confidence."""
    cf = parse_class_file({"classes": {"normal": ["normal lungs"], "pneumonia": ["pneumonia"]}})
    label = np.array([1, 1, 0, 1, 1, 0, 1, 1, 0, 1])
    p1 = np.linspace(0.55, 0.99, 10)
    table = pd.DataFrame({"image": [f"i{i}.png" for i in range(10)], "patient_id": [f"p{i}" for i in range(10)],
                          "label": label, "prob/normal": 1 - p1, "prob/pneumonia": p1, "evaluated": True})
    metrics = evaluate(label, np.stack([1 - p1, p1], 1), cf.names, n_bootstrap=20)
    return ZeroShotResult(table, metrics, cf, pd.DataFrame(columns=["image", "reason"]))


def test_accuracy_is_shown_beside_prevalence_and_the_always_majority_bar(result):
    table = accuracy_table(result)
    assert table.loc["pneumonia", "prevalence"] == pytest.approx(0.7)
    assert table.loc["normal", "prevalence"] == pytest.approx(0.3)
    assert table.loc["all", "accuracy"] == pytest.approx(0.7)  # everything called pneumonia
    assert table.loc["all", "always-majority accuracy"] == pytest.approx(0.7)  # ... which is the majority bar


def test_confident_examples_are_the_most_confident_correct_and_incorrect_calls(result):
    calls = confident_examples(result, "pneumonia", k=2)
    correct, wrong = calls[calls["group"] == "confident correct"], calls[calls["group"] == "confident incorrect"]
    assert correct["image"].tolist() == ["i9.png", "i7.png"]  # highest P among true pneumonia
    assert wrong["image"].tolist() == ["i8.png", "i5.png"]  # highest P among the normals called pneumonia
    assert (correct["truth"] == "yes").all() and (wrong["truth"] == "no").all()
    assert confident_examples(result, "normal", k=2).empty  # never called normal


def test_the_encoding_progress_bar_counts_images_not_batches(tiny_model, tmp_path, monkeypatch):
    import tqdm.auto
    from PIL import Image

    from medclip.eval.inputs import encode_images

    bars = []

    class Recorder:
        def __init__(self, total=None, **kwargs):
            self.total, self.n, self.unit = total, 0, kwargs.get("unit")
            bars.append(self)

        def update(self, n):
            self.n += n

        def close(self):
            pass

    monkeypatch.setattr(tqdm.auto, "tqdm", Recorder)
    paths = []
    for i in range(5):
        Image.fromarray(np.full((16, 16), 40 * i, dtype=np.uint8)).save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    (tmp_path / "bad.png").write_bytes(b"not an image")
    encode_images(tiny_model, [*paths, str(tmp_path / "bad.png")], batch_size=4, progress=True)
    assert [(b.total, b.n, b.unit) for b in bars] == [(6, 6, "img")]
