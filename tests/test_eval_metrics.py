"""Metrics with bootstrap CIs and calibration, on synthetic scores whose properties are known."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medclip.errors import DataError
from medclip.eval.calibration import expected_calibration_error, fit_temperature, probabilities, reliability_bins
from medclip.eval.metrics import bootstrap_indices, evaluate, metrics_table


def _binary_scores(n, seed, separation=1.0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    logit = separation * (2 * y - 1) + rng.normal(size=n)
    p1 = 1 / (1 + np.exp(-logit))
    return y, np.stack([1 - p1, p1], 1)


def test_point_estimates_match_sklearn_and_ci_contains_them():
    y, probs = _binary_scores(300, 0)
    res = evaluate(y, probs, ["normal", "pneumonia"], n_bootstrap=200, seed=1)
    m = res["metrics"]
    assert m["auroc/pneumonia"]["value"] == pytest.approx(roc_auc_score(y, probs[:, 1]))
    assert m["auroc/normal"]["value"] == pytest.approx(roc_auc_score(1 - y, probs[:, 0]))
    assert m["accuracy"]["value"] == pytest.approx(((probs[:, 1] >= 0.5) == y).mean())
    for key in ("auroc/pneumonia", "auroc_macro", "accuracy", "f1_macro"):
        assert m[key]["ci_low"] < m[key]["value"] < m[key]["ci_high"], key
    assert res["n_positive"] == {"normal": int((y == 0).sum()), "pneumonia": int(y.sum())}
    # the same seed gives the same interval
    again = evaluate(y, probs, ["normal", "pneumonia"], n_bootstrap=200, seed=1)["metrics"]["auroc_macro"]
    assert again == m["auroc_macro"]


def test_ci_narrows_with_more_data():
    widths = []
    for n in (100, 1600):
        y, probs = _binary_scores(n, 2)
        a = evaluate(y, probs, ["neg", "pos"], n_bootstrap=200, seed=0)["metrics"]["auroc/pos"]
        widths.append(a["ci_high"] - a["ci_low"])
    assert widths[1] < widths[0] / 2.5  # ~1/sqrt(n): 4x narrower expected


def test_cluster_bootstrap_resamples_whole_patients_and_is_wider_for_correlated_images():
    idx = bootstrap_indices(6, groups=["a", "a", "a", "b", "c", "c"], n_resamples=50, seed=0)
    for sample in idx:  # every patient enters with all of its images
        counts = np.bincount(sample, minlength=6)
        assert counts[0] == counts[1] == counts[2] and counts[4] == counts[5]
    # 40 patients x 10 near-identical images: image-level bootstrap is overconfident
    rng = np.random.default_rng(0)
    y_pat = rng.integers(0, 2, 40)
    s_pat = y_pat * 0.8 + rng.normal(size=40)
    y, s = np.repeat(y_pat, 10), np.repeat(s_pat, 10) + rng.normal(scale=0.01, size=400)
    probs = np.stack([1 - 1 / (1 + np.exp(-s)), 1 / (1 + np.exp(-s))], 1)
    groups = np.repeat(np.arange(40), 10)
    img = evaluate(y, probs, ["n", "p"], n_bootstrap=200)["metrics"]["auroc/p"]
    pat = evaluate(y, probs, ["n", "p"], groups=groups, n_bootstrap=200)["metrics"]["auroc/p"]
    assert (pat["ci_high"] - pat["ci_low"]) > 2 * (img["ci_high"] - img["ci_low"])


def test_multilabel_metrics_skip_unknown_labels():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, (200, 3)).astype(float)
    probs = np.clip(y * 0.6 + rng.uniform(0, 0.4, (200, 3)), 0, 1)
    y[:50, 1] = np.nan  # unknown for condition 1
    res = evaluate(y, probs, ["a", "b", "c"], task="multi", n_bootstrap=50)
    keep = ~np.isnan(y[:, 1])
    assert res["metrics"]["auroc/b"]["value"] == pytest.approx(roc_auc_score(y[keep, 1], probs[keep, 1]))
    assert res["metrics"]["accuracy/a"]["value"] == pytest.approx(((probs[:, 0] >= 0.5) == y[:, 0]).mean())
    table = metrics_table(res, ["a", "b", "c"])
    assert list(table.index) == ["a", "b", "c", "macro"]
    assert table.loc["macro", "auroc"] == pytest.approx(np.mean([res["metrics"][f"auroc/{c}"]["value"] for c in "abc"]))


def test_bad_shapes_raise_one_line_errors():
    with pytest.raises(DataError, match=r"\(N, 2\)"):
        evaluate([0, 1], np.ones((2, 3)) / 3, ["a", "b"])
    with pytest.raises(DataError, match="class indices"):
        evaluate([0, 5], np.ones((2, 2)) / 2, ["a", "b"])


def test_ece_of_calibrated_scores_is_near_zero_and_of_overconfident_is_not():
    rng = np.random.default_rng(0)
    p = rng.uniform(size=50_000)
    y = (rng.uniform(size=p.size) < p).astype(float)
    assert expected_calibration_error(p, y, task="multi") < 0.01
    # single-label: sample labels from the predicted distribution -> calibrated top-1 confidence
    logits = rng.normal(scale=2.0, size=(50_000, 4))
    probs = probabilities(logits)
    labels = (probs.cumsum(1) < rng.uniform(size=(50_000, 1))).sum(1)
    assert expected_calibration_error(probs, labels) < 0.01
    assert expected_calibration_error(probabilities(logits * 4), labels) > 0.1
    bins = reliability_bins(p, y, n_bins=10)
    assert bins["count"].sum() == p.size
    assert np.allclose(bins["accuracy"], bins["confidence"], atol=0.02)


@pytest.mark.parametrize("task", ["single", "multi"])
def test_temperature_scaling_recovers_temperature_and_lowers_ece(task):
    rng = np.random.default_rng(1)
    n, k = 4000, 3
    true_logits = rng.normal(scale=1.5, size=(n, k))
    if task == "single":
        p = probabilities(true_logits)
        y = (p.cumsum(1) < rng.uniform(size=(n, 1))).sum(1)
    else:
        y = (rng.uniform(size=(n, k)) < probabilities(true_logits, "multi")).astype(float)
    over = true_logits * 5.0  # the model is 5x overconfident
    t = fit_temperature(over[: n // 2], y[: n // 2], task)
    assert t == pytest.approx(5.0, rel=0.2)
    before = expected_calibration_error(probabilities(over[n // 2:], task), y[n // 2:], task)
    after = expected_calibration_error(probabilities(over[n // 2:], task, t), y[n // 2:], task)
    assert after < before / 3 and after < 0.05


@pytest.mark.parametrize("task", ["single", "multi"])
def test_vectorised_bootstrap_metrics_equal_sklearn_on_resampled_arrays(task):
    from medclip.eval.metrics import bootstrap_metrics, point_metrics

    rng = np.random.default_rng(3)
    n, names = 120, ["a", "b", "c"]
    probs = np.round(rng.uniform(size=(n, 3)), 1)  # rounding creates ties
    if task == "single":
        probs = probs / probs.sum(1, keepdims=True)
        y = rng.integers(0, 3, n).astype(float)
    else:
        y = rng.integers(0, 2, (n, 3)).astype(float)
        y[rng.uniform(size=(n, 3)) < 0.1] = np.nan
    idx = bootstrap_indices(n, groups=rng.integers(0, 40, n), n_resamples=5, seed=0)
    weights = np.stack([np.bincount(i, minlength=n) for i in idx]).astype(float)
    fast = bootstrap_metrics(y, probs, names, weights, task)
    for b, i in enumerate(idx):
        ref = point_metrics(y[i], probs[i], names, task)
        for key, value in ref.items():
            assert fast[key][b] == pytest.approx(value, nan_ok=True), key


def test_weighted_roc_matches_sklearn_and_band_contains_curve():
    from sklearn.metrics import auc, roc_curve

    from medclip.eval.plots import roc_band, weighted_roc

    y, probs = _binary_scores(150, 5)
    score = np.round(probs[:, 1], 2)  # ties
    fpr, tpr = weighted_roc(y.astype(float), score, np.ones((1, len(y))))
    ref_fpr, ref_tpr, _ = roc_curve(y, score, drop_intermediate=False)
    np.testing.assert_allclose(fpr[0], ref_fpr)
    np.testing.assert_allclose(tpr[0], ref_tpr)
    assert auc(fpr[0], tpr[0]) == pytest.approx(roc_auc_score(y, score))
    band = roc_band(y.astype(float), score, n_bootstrap=100)
    assert np.all(band["low"] <= band["tpr"] + 1e-9) and np.all(band["tpr"] <= band["high"] + 1e-9)
    assert (band["high"] - band["low"]).max() > 0.05
