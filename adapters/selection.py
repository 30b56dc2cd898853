"""Choosing on the validation shots: hyperparameters, the zero-shot starting point, the decision threshold.

A fitted few-shot method must not silently end worse than the zero-shot classifier it starts from.
Where the validation split holds at least :data:`MIN_VAL_PER_CLASS` images per class (per condition:
positives and negatives), choices are made on it: the zero-shot classifier is one of the candidates
(kept when it scores higher), CLIP-Adapter picks its residual ratio, and the decision threshold for
accuracy is the one that maximises validation accuracy. With fewer, the defaults stay and a warning
says when the fitted method scores below zero-shot on the validation images that exist.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from medclip.eval.task import Task

logger = logging.getLogger("medclip_adapters")

MIN_VAL_PER_CLASS = 8
THRESHOLDS = np.round(np.arange(0.05, 0.96, 0.05), 2)


def selection_score(task: Task, scores, y: np.ndarray) -> tuple[float, float]:
    """Validation score to maximise when choosing (probe C, Tip's alpha/beta, ratio, zero-shot or not).

    Accuracy (single-label) or mean AUROC over conditions (multi-label), then minus the NLL to break the
    ties that tiny validation sets produce.
    """
    scores = np.asarray(scores, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    nll = float(task.loss(torch.as_tensor(scores), torch.as_tensor(y)))
    return task.label_kind.selection_metric(scores, y), -nll


def per_class(task: Task, y: np.ndarray) -> int:
    """Validation images of the rarest class (per condition: of the rarer of positives and negatives)."""
    return int(min(mask.sum() for mask, _ in task.shot_groups(y))) if len(y) else 0


def enough(task: Task, val) -> bool:
    """Whether ``val`` holds :data:`MIN_VAL_PER_CLASS` images per class (choices are then made on it)."""
    return val is not None and len(val) > 0 and per_class(task, task.labels(val)) >= MIN_VAL_PER_CLASS


def choose_threshold(task: Task, probs: np.ndarray, y: np.ndarray) -> float:
    """The threshold in :data:`THRESHOLDS` with the highest validation accuracy (ties: the one nearest 0.5)."""
    from medclip.eval.metrics import point_metrics

    accuracy = [point_metrics(y, probs, task.classes, task.kind, float(t))["accuracy"] for t in THRESHOLDS]
    best = max(range(len(THRESHOLDS)), key=lambda i: (accuracy[i], -abs(THRESHOLDS[i] - 0.5)))
    return float(THRESHOLDS[best])


@torch.no_grad()
def against_zeroshot(method, val) -> None:
    """Compare the fitted ``method`` with the zero-shot classifier on ``val``; record and act on the result.

    Sets ``method.selected``: ``val_score`` / ``zeroshot_val_score`` (the :func:`selection_score` metric),
    ``start`` (``fitted`` or ``zeroshot``: which predicts) and ``threshold``. With enough validation the
    better of the two predicts and the threshold is chosen on validation; otherwise the fitted method
    predicts at 0.5 and a warning names the gap when it is below zero-shot.
    """
    if val is None or len(val) == 0:
        return
    y = method.task.labels(val)
    fitted = method._scores(val).double().numpy()
    zero = method.zeroshot_scores(val).double().numpy()
    ours, theirs = selection_score(method.task, fitted, y), selection_score(method.task, zero, y)
    method.selected.update({"val_score": ours[0], "zeroshot_val_score": theirs[0]})
    if enough(method.task, val):
        start = "zeroshot" if theirs > ours else "fitted"
        chosen = zero if start == "zeroshot" else fitted
        probs = method.task.probs(torch.as_tensor(chosen)).numpy()
        method.selected.update({"start": start, "threshold": choose_threshold(method.task, probs, y)})
        if start == "zeroshot":
            logger.info("%s: the zero-shot classifier scores higher on the %d validation images (%.3f vs %.3f); "
                        "it predicts instead", method.name, len(val), theirs[0], ours[0])
        return
    if theirs[0] > ours[0]:
        logger.warning("%s: below zero-shot on the %d validation images (%.3f vs %.3f); fewer than %d per class, so "
                       "the fitted method is kept (draw more validation shots to select on them)", method.name,
                       len(val), ours[0], theirs[0], MIN_VAL_PER_CLASS)
