"""Calibration: expected calibration error, reliability-diagram bins and temperature scaling.

A model is *calibrated* when, among images it gives 70% to, about 70% are truly positive. The
expected calibration error (ECE, Guo et al. 2017) bins predictions by confidence (equal-width bins)
and averages ``|accuracy - confidence|`` weighted by bin size; 0 is perfect.

* ``single``-label: the confidence is the top-1 probability and "accuracy" is whether top-1 is right.
* ``multi``-label (or binary): each condition's probability is compared with the fraction of positives;
  the ECE is averaged over conditions (unknown labels, NaN, are skipped).

Temperature scaling divides the logits by one scalar ``T`` fitted on a validation split to minimise
the negative log-likelihood; it changes confidence but never the ranking (AUROC is unchanged).
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import DataError
from .task import label_kind


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Equal-width bins of ``confidence`` in [0, 1] with the mean confidence and accuracy in each.

    Args:
        confidence: predicted probability of the event, shape ``(N,)``.
        correct: 1 when the event happened, 0 otherwise, shape ``(N,)``.
        n_bins: number of bins.

    Returns:
        dict of arrays of length ``n_bins``: ``edges`` (n_bins + 1), ``confidence``, ``accuracy``
        (NaN for empty bins) and ``count``.
    """
    confidence, correct = np.asarray(confidence, dtype=float), np.asarray(correct, dtype=float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    count = np.bincount(which, minlength=n_bins).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.bincount(which, weights=confidence, minlength=n_bins) / count
        acc = np.bincount(which, weights=correct, minlength=n_bins) / count
    return {"edges": edges, "confidence": conf, "accuracy": acc, "count": count}


def _events(probs: np.ndarray, y_true: np.ndarray, task: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """(confidence, correct) pairs: one for single-label (top-1), one per condition for multi-label."""
    probs, y_true = np.asarray(probs, dtype=float), np.asarray(y_true, dtype=float)
    kind = label_kind(task)
    if probs.ndim == 1:
        probs, y_true = probs[:, None], y_true[:, None]
    if probs.ndim != 2 or y_true.shape != kind.label_shape(*probs.shape):
        raise DataError(f"calibration: {kind.name}-label probs {probs.shape} need labels of shape "
                        f"{kind.label_shape(*probs.shape)}, got {y_true.shape}")
    return kind.calibration_events(probs, y_true)


def pooled_bins(probs: np.ndarray, y_true: np.ndarray, task: str, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Reliability bins over every (confidence, correct) event of :func:`_events` pooled together."""
    events = _events(probs, y_true, task)
    return reliability_bins(np.concatenate([c for c, _ in events]), np.concatenate([k for _, k in events]), n_bins)


def expected_calibration_error(probs, y_true, task: str = "single", n_bins: int = 15) -> float:
    """ECE in [0, 1] (see module docstring); for multi-label, the mean over conditions."""
    values = []
    for conf, correct in _events(probs, y_true, task):
        bins = reliability_bins(conf, correct, n_bins)
        full = bins["count"] > 0
        gap = np.abs(bins["accuracy"][full] - bins["confidence"][full])
        values.append(float((gap * bins["count"][full]).sum() / bins["count"].sum()))
    return float(np.mean(values)) if values else float("nan")


def probabilities(logits, task: str = "single", temperature: float = 1.0) -> np.ndarray:
    """Softmax (single-label) or sigmoid (multi-label) of ``logits / temperature``."""
    z = torch.tensor(np.array(logits, dtype=np.float64)) / float(temperature)
    return label_kind(task).probs(z).numpy()


def fit_temperature(logits, y_true, task: str = "single", bounds: tuple[float, float] = (0.01, 100.0)) -> float:
    """Fit the temperature ``T`` minimising the NLL of ``softmax/sigmoid(logits / T)`` on held-out data.

    The NLL is a smooth one-dimensional function of ``log T``; it is minimised with SciPy's bounded
    Brent search over ``bounds``.

    Args:
        logits: ``(N, K)`` (single) or ``(N, K)`` pos-minus-neg logits (multi).
        y_true: class indices ``(N,)`` or 0/1/NaN ``(N, K)``.
        task: ``single`` or ``multi``.
        bounds: the range of ``T`` searched.

    Returns:
        The fitted temperature (> 1 softens an overconfident model, < 1 sharpens an underconfident one).
    """
    from scipy.optimize import minimize_scalar

    kind = label_kind(task)
    z = torch.tensor(np.array(logits, dtype=np.float64))
    y = torch.tensor(np.array(y_true, dtype=np.float64))
    if z.shape[0] < 2:
        raise DataError("temperature scaling needs at least 2 validation images")

    def objective(log_t: float) -> float:
        return float(kind.loss(z / np.exp(log_t), y))

    res = minimize_scalar(objective, bounds=(np.log(bounds[0]), np.log(bounds[1])), method="bounded",
                          options={"xatol": 1e-5})
    return float(np.exp(res.x))
