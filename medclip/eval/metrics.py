"""Classification metrics with bootstrap 95% confidence intervals.

AUROC (per class and macro), accuracy and F1 at a chosen threshold. The
confidence intervals come from the percentile bootstrap: the evaluation set is resampled with
replacement ``n_bootstrap`` times (seeded), either image by image or **patient by patient** (cluster
bootstrap: all images of a sampled patient enter together, which is the honest choice when a patient
contributes several images). Every metric is computed on the same resamples, so the macro CI is
consistent with the per-class ones. The resamples are scored
all at once from per-image counts (:func:`bootstrap_metrics`, equal to scikit-learn on the resampled
arrays and ~1000x faster than calling it per resample). Resamples in which a metric is undefined
(e.g. AUROC when a resample holds a single class) are left out of that metric's interval and counted.

Two tasks:

* ``single``: ``y_true`` is an integer class per image, ``probs`` is ``(N, K)`` (rows sum to 1).
  Accuracy is top-1; per-class AUROC is one-vs-rest; F1 per class uses the top-1 prediction (for two
  classes, ``probs[:, 1] >= threshold``).
* ``multi``: ``y_true`` is ``(N, K)`` with 1/0 per condition and NaN for unknown (excluded for that
  condition only); ``probs`` is ``(N, K)`` independent probabilities; predictions are ``p >= threshold``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from ..defaults import N_BOOTSTRAP
from ..errors import DataError
from .task import label_kind

logger = logging.getLogger(__name__)
CI = 0.95  # the confidence level of every interval


def bootstrap_indices(n: int, groups: Sequence | None = None, n_resamples: int = N_BOOTSTRAP,
                      seed: int = 0) -> list[np.ndarray]:
    """Row indices of ``n_resamples`` bootstrap resamples.

    Args:
        n: number of rows (images).
        groups: optional cluster id per row (patient id); whole clusters are resampled.
        n_resamples: how many resamples.
        seed: random seed (the same seed gives the same resamples).

    Returns:
        A list of integer index arrays.
    """
    rng = np.random.default_rng(seed)
    if groups is None:
        return [rng.integers(0, n, size=n) for _ in range(n_resamples)]
    if len(groups) != n:
        raise DataError(f"bootstrap: {len(groups)} group ids for {n} rows")
    _, inverse = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(inverse.max() + 1)]
    out = []
    for _ in range(n_resamples):
        picked = rng.integers(0, len(members), size=len(members))
        out.append(np.concatenate([members[g] for g in picked]))
    return out


def auroc(y: np.ndarray, score: np.ndarray) -> float:
    """AUROC of ``score`` for the 0/1 labels ``y`` (NaN labels left out; NaN when one class is absent).

    The Mann-Whitney statistic with ties counted half, i.e. :func:`sklearn.metrics.roc_auc_score`
    (tested); the project's one AUROC, also behind the bootstrap (:func:`bootstrap_metrics`).
    """
    y, score = np.asarray(y, dtype=float), np.asarray(score, dtype=float)
    return float(_weighted_auroc(y, score, np.ones((1, len(y))))[0])


def _f1(y: np.ndarray, pred: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    keep = ~np.isnan(y)
    if not keep.any():
        return float("nan")
    return float(f1_score(y[keep].astype(int), pred[keep].astype(int), zero_division=0))


def point_metrics(y_true: np.ndarray, probs: np.ndarray, class_names: Sequence[str], task: str = "single",
                  threshold: float = 0.5) -> dict[str, float]:
    """Flat dict of metrics on one (re)sample: ``auroc/<class>``, ``auroc_macro``, ``f1/<class>``,
    ``f1_macro``, ``accuracy`` (and ``accuracy/<class>`` for multi-label). Undefined values are NaN."""
    kind = label_kind(task)
    targets, decisions = kind.indicator(y_true, probs.shape[1]), kind.decisions(probs, threshold)
    out: dict[str, float] = {}
    for c, name in enumerate(class_names):
        out[f"auroc/{name}"] = auroc(targets[:, c], probs[:, c])
        out[f"f1/{name}"] = _f1(targets[:, c], decisions[:, c])
    out.update(kind.accuracies(targets, decisions, class_names, _mean_known, _nanmean))
    for metric in ("auroc", "f1"):
        out[f"{metric}_macro"] = _nanmean([out[f"{metric}/{n}"] for n in class_names])
    return out


def _mean_known(correct: np.ndarray, known: np.ndarray) -> float:
    return float(correct[known].mean()) if known.any() else float("nan")


def _nanmean(values: list[float]) -> float:
    return float(np.nanmean(values)) if not np.all(np.isnan(values)) else float("nan")


def _weighted_auroc(y: np.ndarray, p: np.ndarray, w: np.ndarray) -> np.ndarray:
    """AUROC of every row of weights ``w (B, n)`` at once (Mann-Whitney with ties counted half).

    A bootstrap resample is a vector of counts per image, so one matrix pass scores all resamples.
    Equals :func:`sklearn.metrics.roc_auc_score` on the resampled arrays (tested).
    """
    keep = ~np.isnan(y)
    y, p, w = y[keep], p[keep], w[:, keep]
    order = np.argsort(p, kind="mergesort")
    y, p, w = y[order], p[order], w[:, order]
    wp, wn = w * y, w * (1 - y)
    starts = np.flatnonzero(np.r_[True, p[1:] != p[:-1]])  # first index of each tie group
    neg_group = np.add.reduceat(wn, starts, axis=1) if p.size else wn
    pos_group = np.add.reduceat(wp, starts, axis=1) if p.size else wp
    neg_below = np.cumsum(neg_group, axis=1) - neg_group
    pairs = (pos_group * (neg_below + 0.5 * neg_group)).sum(1)
    total = wp.sum(1) * wn.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, pairs / total, np.nan)


def _weighted_f1(y: np.ndarray, pred: np.ndarray, w: np.ndarray) -> np.ndarray:
    """F1 of the positive class for every row of weights ``w (B, n)`` (0 when undefined, as sklearn)."""
    keep = ~np.isnan(y)
    y, pred, w = y[keep], pred[keep].astype(float), w[:, keep]
    tp, fp, fn = w @ (y * pred), w @ ((1 - y) * pred), w @ (y * (1 - pred))
    denom = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2 * tp / denom, 0.0) if y.size else np.full(w.shape[0], np.nan)


def _weighted_accuracy(correct: np.ndarray, known: np.ndarray, w: np.ndarray) -> np.ndarray:
    total = w @ known.astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (w @ (correct * known)) / total, np.nan)


def bootstrap_metrics(y_true: np.ndarray, probs: np.ndarray, class_names: Sequence[str], weights: np.ndarray,
                      task: str = "single", threshold: float = 0.5) -> dict[str, np.ndarray]:
    """The metrics of :func:`point_metrics` for many resamples at once.

    Args:
        weights: ``(B, N)`` how many times each image occurs in each resample (``np.bincount`` of the
            bootstrap indices); a row of ones gives the point estimate.

    Returns:
        dict of metric name -> array of ``B`` values (NaN where undefined).
    """
    kind = label_kind(task)
    targets, decisions = kind.indicator(y_true, probs.shape[1]), kind.decisions(probs, threshold)
    out: dict[str, np.ndarray] = {}
    for c, name in enumerate(class_names):
        out[f"auroc/{name}"] = _weighted_auroc(targets[:, c], probs[:, c], weights)
        out[f"f1/{name}"] = _weighted_f1(targets[:, c], decisions[:, c], weights)
    out.update(kind.accuracies(targets, decisions, class_names,
                               lambda correct, known: _weighted_accuracy(correct, known, weights), _nanmean_rows))
    for metric in ("auroc", "f1"):
        out[f"{metric}_macro"] = _nanmean_rows([out[f"{metric}/{n}"] for n in class_names])
    return out


def _nanmean_rows(columns: list[np.ndarray]) -> np.ndarray:
    stacked = np.stack(columns, 1)
    valid = ~np.isnan(stacked)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(valid.any(1), np.nansum(stacked, 1) / valid.sum(1), np.nan)


def _check_inputs(y_true, probs, class_names, task) -> tuple[np.ndarray, np.ndarray]:
    kind = label_kind(task)
    y_true, probs = np.asarray(y_true, dtype=float), np.asarray(probs, dtype=float)
    if probs.ndim != 2 or probs.shape[1] != len(class_names):
        raise DataError(f"probabilities must be (N, {len(class_names)}) for classes {list(class_names)}, "
                        f"got {probs.shape}")
    want = kind.label_shape(*probs.shape)
    if y_true.shape != want:
        raise DataError(f"labels must have shape {want} for a {task}-label task, got {y_true.shape}")
    if probs.shape[0] == 0:
        raise DataError("no labelled images to evaluate")
    problem = kind.label_problem(y_true, len(class_names))
    if problem:
        raise DataError(problem)
    return y_true, probs


def evaluate(y_true, probs, class_names: Sequence[str], task: str = "single", threshold: float = 0.5,
             groups: Sequence | None = None, n_bootstrap: int = N_BOOTSTRAP, seed: int = 0) -> dict:
    """Metrics with percentile-bootstrap confidence intervals.

    Args:
        y_true: class indices ``(N,)`` (single) or 0/1/NaN matrix ``(N, K)`` (multi).
        probs: ``(N, K)`` predicted probabilities.
        class_names: the K class/condition names.
        task: ``single`` or ``multi``.
        threshold: decision threshold for F1/accuracy (binary and multi-label).
        groups: optional patient id per image: resample patients (cluster bootstrap) instead of images.
        n_bootstrap: number of resamples (0 = point estimates only).
        seed: bootstrap seed.

    Returns:
        ``{"metrics": {name: {"value", "ci_low", "ci_high", "n_valid_resamples"}}, "n_images",
        "n_groups", "n_positive": {class: count}, "bootstrap": {...settings}}``.
    """
    y_true, probs = _check_inputs(y_true, probs, class_names, task)
    point = point_metrics(y_true, probs, class_names, task, threshold)
    samples: dict[str, list[np.ndarray]] = {k: [] for k in point}
    indices = bootstrap_indices(len(probs), groups, n_bootstrap, seed)
    for start in range(0, len(indices), 200):  # resamples scored 200 at a time (bounded memory)
        weights = np.stack([np.bincount(i, minlength=len(probs)) for i in indices[start:start + 200]]).astype(float)
        for key, values in bootstrap_metrics(y_true, probs, class_names, weights, task, threshold).items():
            samples[key].append(values)
    ci = CI
    lo_q, hi_q = 100 * (1 - ci) / 2, 100 * (1 + ci) / 2
    metrics = {}
    for key, value in point.items():
        vals = np.concatenate(samples[key]) if samples[key] else np.zeros(0)
        vals = vals[~np.isnan(vals)]
        low, high = (np.percentile(vals, [lo_q, hi_q]) if vals.size else (np.nan, np.nan))
        metrics[key] = {"value": value, "ci_low": float(low), "ci_high": float(high),
                        "n_valid_resamples": int(vals.size)}
    targets = label_kind(task).indicator(y_true, len(class_names))
    positives = {n: int(np.nansum(targets[:, c])) for c, n in enumerate(class_names)}
    undefined = [n for n in class_names if np.isnan(point[f"auroc/{n}"])]
    if undefined:  # the macro is over the others: say so, never silently
        logger.warning("AUROC undefined for %s (only one label value among the evaluated images); the macro AUROC "
                       "averages the other %d of %d", ", ".join(undefined), len(class_names) - len(undefined),
                       len(class_names))
    return {"metrics": metrics, "n_images": int(len(probs)), "auroc_undefined": undefined,
            "n_groups": int(len(set(map(str, groups)))) if groups is not None else int(len(probs)),
            "n_positive": positives,
            "bootstrap": {"n_resamples": n_bootstrap, "seed": seed, "ci": ci, "threshold": threshold,
                          "unit": "patient" if groups is not None else "image"}}


def metrics_table(result: dict, class_names: Sequence[str], metric: str = "auroc"):
    """A pandas table (one row per class plus ``macro``) of ``metric`` with its CI, for notebooks."""
    import pandas as pd

    rows = []
    for name in [*class_names, "macro"]:
        key = f"{metric}_macro" if name == "macro" else f"{metric}/{name}"
        m = result["metrics"][key]
        rows.append({"class": name, metric: m["value"], "ci_low": m["ci_low"], "ci_high": m["ci_high"],
                     "positives": result["n_positive"].get(name, np.nan) if name != "macro" else np.nan})
    return pd.DataFrame(rows).set_index("class")
