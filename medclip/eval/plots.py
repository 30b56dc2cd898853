"""Evaluation figures (matplotlib, Agg backend, saved as PNG): ROC curves with bootstrap CI bands,
reliability diagrams, confusion matrices and grids of example images.

Every function returns the matplotlib ``Figure`` and, given ``path``, also writes it as a PNG, so the
same calls serve the CLI (files) and the notebook (inline display).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from ..defaults import N_BOOTSTRAP_FIGURE
from .metrics import bootstrap_indices
from .task import label_kind


def _pyplot():
    import matplotlib

    if "ipykernel" not in str(matplotlib.get_backend()).lower() and "inline" not in str(matplotlib.get_backend()):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike | None):
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


def weighted_roc(y: np.ndarray, score: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC points ``(fpr, tpr)``, each ``(B, T + 1)``, for every row of per-image weights ``(B, N)``.

    A bootstrap resample is a vector of counts per image, so all resamples' curves come from one
    cumulative sum over the images sorted by decreasing score (ties form one threshold).
    """
    order = np.argsort(-score, kind="mergesort")
    y, score, w = y[order], score[order], weights[:, order]
    starts = np.flatnonzero(np.r_[True, score[1:] != score[:-1]])
    tp = np.cumsum(np.add.reduceat(w * y, starts, axis=1), axis=1)
    fp = np.cumsum(np.add.reduceat(w * (1 - y), starts, axis=1), axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr, fpr = tp / tp[:, -1:], fp / fp[:, -1:]
    zeros = np.zeros((w.shape[0], 1))
    return np.hstack([zeros, fpr]), np.hstack([zeros, tpr])


def roc_band(y: np.ndarray, score: np.ndarray, groups=None, n_bootstrap: int = N_BOOTSTRAP_FIGURE, seed: int = 0,
             ci: float = 0.95, grid: int = 101) -> dict[str, np.ndarray]:
    """ROC curve on a fixed false-positive-rate grid, with a percentile-bootstrap band of the TPR.

    Returns:
        dict with ``fpr`` (grid), ``tpr`` (point curve), ``low`` and ``high`` (band); NaN when the
        labels hold a single class.
    """
    keep = ~np.isnan(y)
    y, score = y[keep].astype(float), np.asarray(score, dtype=float)[keep]
    groups = None if groups is None else np.asarray(groups)[keep]
    fpr_grid = np.linspace(0, 1, grid)
    nan = np.full(grid, np.nan)
    if y.size == 0 or y.min() == y.max():
        return {"fpr": fpr_grid, "tpr": nan, "low": nan, "high": nan}
    idx = bootstrap_indices(len(y), groups, n_bootstrap, seed)
    weights = np.stack([np.ones(len(y)), *(np.bincount(i, minlength=len(y)) for i in idx)]).astype(float)
    fpr, tpr = weighted_roc(y, score, weights)
    curves = np.stack([np.interp(fpr_grid, f, t) if np.isfinite(f[-1]) and np.isfinite(t[-1]) else nan
                       for f, t in zip(fpr, tpr)])
    boot = curves[1:][~np.isnan(curves[1:]).any(1)]
    q = [100 * (1 - ci) / 2, 100 * (1 + ci) / 2]
    low, high = np.percentile(boot, q, axis=0) if len(boot) else (curves[0], curves[0])
    return {"fpr": fpr_grid, "tpr": curves[0], "low": low, "high": high}


def plot_roc(y_true: np.ndarray, probs: np.ndarray, class_names: Sequence[str], task: str = "single",
             metrics: dict | None = None, groups=None, n_bootstrap: int = N_BOOTSTRAP_FIGURE, path=None):
    """One ROC curve per class (one-vs-rest for single-label) with its 95% bootstrap band; the legend states
    each curve's number of positives and negatives.

    Args:
        metrics: the output of :func:`medclip.eval.metrics.evaluate` (AUROC and CI go in the legend; its
            bootstrap seed seeds the bands).
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    kind = label_kind(task)
    targets = kind.indicator(np.asarray(y_true), len(class_names))
    for c in kind.curves(len(class_names)):  # binary single-label: the positive class only (mirror images)
        name, y = class_names[c], targets[:, c]
        band = roc_band(y, probs[:, c], groups, n_bootstrap, (metrics or {}).get("bootstrap", {}).get("seed", 0))
        if np.isnan(band["tpr"]).all():
            continue
        known = y[~np.isnan(y)]
        label = f"{name} ({int(known.sum())} positive / {int(len(known) - known.sum())} negative)"
        if metrics and f"auroc/{name}" in metrics["metrics"]:
            m = metrics["metrics"][f"auroc/{name}"]
            label = f"{label}: AUROC {m['value']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]"
        (line,) = ax.plot(band["fpr"], band["tpr"], label=label)
        ax.fill_between(band["fpr"], band["low"], band["high"], color=line.get_color(), alpha=0.2)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="chance")
    ax.set(xlabel="False positive rate (1 - specificity)", ylabel="True positive rate (sensitivity)",
           title="ROC curves (shaded: 95% bootstrap CI)", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_reliability(curves: dict[str, dict], path=None):
    """Reliability diagram: observed frequency vs predicted confidence per bin, one series per entry; each
    point is labelled with its bin's count (a bin of 3 images says little).

    Args:
        curves: label (e.g. ``"before scaling (ECE 0.21)"``) -> output of
            :func:`medclip.eval.calibration.reliability_bins`.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfect calibration")
    for label, bins in curves.items():
        full = bins["count"] > 0
        (line,) = ax.plot(bins["confidence"][full], bins["accuracy"][full], "o-", label=label)
        for x, y, n in zip(bins["confidence"][full], bins["accuracy"][full], bins["count"][full]):
            ax.annotate(f"{int(n)}", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7,
                        color=line.get_color())
    ax.set(xlabel="Predicted probability (confidence)", ylabel="Observed frequency (accuracy)",
           title="Reliability diagram (numbers: predictions per bin)", xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path)


def plot_confusion(y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str], path=None):
    """Confusion matrix (rows: true class, columns: predicted) with counts and row percentages."""
    from sklearn.metrics import confusion_matrix

    plt = _pyplot()
    k = len(class_names)
    cm = confusion_matrix(y_true, y_pred, labels=list(range(k)))
    rows = cm.sum(1, keepdims=True).clip(min=1)
    fig, ax = plt.subplots(figsize=(1.2 * k + 2.5, 1.2 * k + 2))
    ax.imshow(cm / rows, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{cm[i, j]}\n{100 * cm[i, j] / rows[i, 0]:.0f}%", ha="center", va="center",
                    color="white" if cm[i, j] / rows[i, 0] > 0.5 else "black", fontsize=9)
    ax.set(xticks=range(k), yticks=range(k), xticklabels=class_names, yticklabels=class_names,
           xlabel="Predicted", ylabel="True", title="Confusion matrix")
    return _save(fig, path)


def plot_examples(paths: Sequence[str], titles: Sequence[str], ncols: int = 4, path=None, title: str | None = None):
    """A grid of images (grayscale) with a title each, e.g. the model's most/least confident cases."""
    from ..data.transforms import load_image

    plt = _pyplot()
    n = max(len(paths), 1)
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(3 * ncols, 3.2 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, caption in zip(axes.flat, paths, titles):
        arr = load_image(image)
        ax.imshow(arr if arr.ndim == 3 else arr, cmap=None if arr.ndim == 3 else "gray", vmin=0, vmax=1)
        ax.set_title(caption, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
