"""The task: one view over a class file that evaluation and every few-shot adapter take.

A :class:`Task` holds the classes (or conditions), one text target per class (``single``-label) or a
positive and a negative target per condition (``multi``-label), the prompts of every target, and how
labels are read from a manifest. What differs between the two kinds lives in a :class:`LabelKind`
(:data:`SINGLE`, :data:`MULTI`), so no caller branches on the kind:

* ``single``: a label is a class index (``-1``: unlabelled); probabilities are a softmax over classes,
  the loss is cross-entropy, accuracy is top-1 (for two classes ``p[1] >= threshold``).
* ``multi``: a label is a 0/1/NaN matrix (NaN: unknown, left out per condition); the score of a
  condition is ``logit(pos) - logit(neg)`` and its probability a sigmoid (the softmax over the pair),
  trained with BCE over known labels; accuracy is per condition at ``threshold``, then averaged.

The "No Finding" rule lives here only: a multi-label condition marked ``no_finding`` without explicit
negatives is contrasted with every other condition's positive prompts ("normal" vs "any finding"),
and when its label column is absent it is derived (1 when every other condition is 0, 0 when any is 1).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, DataError


class LabelKind:
    """Behaviour of one task kind (see the module docstring); use :data:`SINGLE` or :data:`MULTI`."""

    name = ""
    targets_per_class = 1
    min_classes = 1
    exclusive = False  # one class per image (a confusion matrix and class-stratified subsets make sense)
    shot_values: tuple = (1,)  # label values drawn as shots per class/condition

    def probs(self, scores: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, scores: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def labelled(self, y: np.ndarray) -> np.ndarray:
        """Rows with at least one known label."""
        raise NotImplementedError

    def indicator(self, y: np.ndarray, k: int) -> np.ndarray:
        """Labels as a 0/1/NaN matrix ``(N, K)``: one binary target per class/condition."""
        raise NotImplementedError

    def decisions(self, probs: np.ndarray, threshold: float = 0.5) -> np.ndarray:
        """0/1 decisions ``(N, K)``: the predicted class (one-hot) or each condition at ``threshold``."""
        raise NotImplementedError

    def accuracies(self, targets, decisions, names, reduce, mean) -> dict:
        """Accuracy entries from :meth:`indicator` targets and :meth:`decisions`.

        ``reduce(correct, known)`` turns per-image correctness into one accuracy, ``mean(values)``
        averages per-condition accuracies (NaN-aware); both are given by the caller (point estimate or
        bootstrap weights).
        """
        raise NotImplementedError

    def label_shape(self, n: int, k: int) -> tuple:
        raise NotImplementedError

    def calibration_events(self, probs: np.ndarray, y: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """(confidence, correct) pairs for calibration: top-1 (single), or each condition's known labels."""
        raise NotImplementedError

    def selection_metric(self, scores: np.ndarray, y: np.ndarray) -> float:
        """What validation maximises when choosing hyperparameters: top-1 accuracy (single) or the mean
        AUROC over conditions with both labels present (multi; 0 when none)."""
        raise NotImplementedError

    def majority_accuracy(self, targets: np.ndarray) -> float:
        """Accuracy of always answering the most common label (the bar accuracy must clear), from
        :meth:`indicator` targets: the commonest class's share (single) or, per condition, the larger of
        the positive and negative shares, averaged (multi)."""
        raise NotImplementedError

    def label_problem(self, y: np.ndarray, k: int) -> str | None:
        """Why ``y`` cannot be scored against ``k`` classes (one line), or None when it can."""
        raise NotImplementedError

    def curves(self, k: int) -> list[int]:
        """Classes drawn as their own ROC curve (binary single-label: the positive class only)."""
        return list(range(k))


class _Single(LabelKind):
    name, targets_per_class, min_classes, exclusive = "single", 1, 2, True

    def probs(self, scores):
        return scores.softmax(-1)

    def loss(self, scores, y):
        return F.cross_entropy(scores, y.long())

    def labelled(self, y):
        return np.asarray(y) >= 0

    def indicator(self, y, k):
        y = np.asarray(y)
        out = np.full((len(y), k), np.nan)
        known = y >= 0
        out[known] = np.eye(k)[y[known].astype(int)]
        return out

    def decisions(self, probs, threshold=0.5):
        k = probs.shape[1]
        pred = (probs[:, 1] >= threshold).astype(int) if k == 2 else probs.argmax(1)
        return np.eye(k)[pred]

    def accuracies(self, targets, decisions, names, reduce, mean):
        return {"accuracy": reduce((decisions == targets).all(1).astype(float), np.ones(len(targets), bool))}

    def label_shape(self, n, k):
        return (n,)

    def calibration_events(self, probs, y):
        return [(probs.max(1), (probs.argmax(1) == y).astype(float))]

    def selection_metric(self, scores, y):
        return float((scores.argmax(1) == y).mean())

    def majority_accuracy(self, targets):
        return float(np.nanmax(np.nanmean(targets, 0)))

    def label_problem(self, y, k):
        y = np.asarray(y, dtype=float)
        if np.isnan(y).any() or (y < 0).any() or (y >= k).any() or (y != np.round(y)).any():
            return f"single-label targets must be class indices 0..{k - 1} without gaps"
        return None

    def curves(self, k):
        return [1] if k == 2 else list(range(k))


class _Multi(LabelKind):
    name, targets_per_class, min_classes, shot_values = "multi", 2, 1, (1, 0)

    def probs(self, scores):
        return scores.sigmoid()

    def loss(self, scores, y):
        known = ~torch.isnan(y)
        return F.binary_cross_entropy_with_logits(scores[known], y[known].to(scores.dtype))

    def labelled(self, y):
        return ~np.isnan(np.asarray(y, dtype=float)).all(1)

    def indicator(self, y, k):
        return np.asarray(y, dtype=float)

    def decisions(self, probs, threshold=0.5):
        return (probs >= threshold).astype(float)

    def accuracies(self, targets, decisions, names, reduce, mean):
        out = {}
        for c, name in enumerate(names):
            y = targets[:, c]
            out[f"accuracy/{name}"] = reduce((decisions[:, c] == np.nan_to_num(y)).astype(float), ~np.isnan(y))
        out["accuracy"] = mean([out[f"accuracy/{n}"] for n in names])
        return out

    def label_shape(self, n, k):
        return (n, k)

    def majority_accuracy(self, targets):
        share = np.nanmean(targets, 0)
        return float(np.nanmean(np.maximum(share, 1 - share)))

    def selection_metric(self, scores, y):
        from .metrics import auroc

        aucs = [auroc(y[:, c], scores[:, c]) for c in range(scores.shape[1])]
        aucs = [a for a in aucs if not np.isnan(a)]
        return float(np.mean(aucs)) if aucs else 0.0

    def label_problem(self, y, k):
        y = np.asarray(y, dtype=float)
        bad = sorted(set(y[~np.isnan(y) & (y != 0) & (y != 1)].tolist()))
        return f"multi-label targets must be 0, 1 or unknown (NaN), got {bad[:5]}" if bad else None

    def calibration_events(self, probs, y):
        known = ~np.isnan(y)
        return [(probs[known[:, c], c], y[known[:, c], c]) for c in range(probs.shape[1]) if known[:, c].any()]


SINGLE, MULTI = _Single(), _Multi()
KINDS = {kind.name: kind for kind in (SINGLE, MULTI)}


def label_kind(kind: str | LabelKind) -> LabelKind:
    """The :class:`LabelKind` named ``kind`` (``single`` or ``multi``)."""
    if isinstance(kind, LabelKind):
        return kind
    if kind not in KINDS:
        raise DataError(f"task must be one of {tuple(KINDS)}, got '{kind}'")
    return KINDS[kind]


@dataclass
class Task:
    """Classes, their text targets and how labels are read from a manifest.

    Attributes:
        classes: the K class (single) or condition (multi) names.
        kind: ``single`` or ``multi``.
        names: short text per target (CoOp's class token): K for single, 2K (positives then negatives)
            for multi.
        prompts: full prompts per target (templates filled in), ensembled by averaging embeddings.
        label_column: single-label: the manifest column holding the class value.
        values: single-label: class -> manifest values / folder names meaning it (default: its name).
        columns: multi-label: condition -> its manifest column (default: its name).
        no_finding: multi-label: the "No Finding" condition, if any (see the module docstring).
        uncertain: multi-label: the policy for CheXpert's uncertain ``-1`` (``ones``, ``zeros`` or ``ignore``).
    """

    classes: list
    kind: str = "single"
    names: list = field(default_factory=list)
    prompts: list = field(default_factory=list)
    label_column: str = "label"
    values: dict = field(default_factory=dict)
    columns: dict = field(default_factory=dict)
    no_finding: str | None = None
    uncertain: str = "ignore"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ConfigError(f"task kind must be one of {tuple(KINDS)}, got '{self.kind}'")
        self.classes = [str(c) for c in self.classes]
        if len(self.classes) < self.label_kind.min_classes:
            raise ConfigError(f"a {self.kind}-label task needs more classes, got {self.classes}")
        if not self.names:
            negatives = [f"no {c}" for c in self.classes] if self.label_kind.targets_per_class == 2 else []
            self.names = list(self.classes) + negatives
        if not self.prompts:
            self.prompts = [[f"a chest x-ray showing {name}."] for name in self.names]
        n = self.n_targets
        if len(self.names) != n or len(self.prompts) != n:
            raise ConfigError(f"a {self.kind}-label task with {len(self.classes)} classes needs {n} target names "
                              f"and prompt lists, got {len(self.names)} and {len(self.prompts)}")

    @classmethod
    def from_class_file(cls, cf) -> Task:
        """The task of a class file (:class:`medclip.eval.prompts.ClassFile`)."""
        from .prompts import negative_texts, positive_texts

        names = list(cf.names)
        prompts = [positive_texts(cf, n) for n in names]
        if cf.task == SINGLE.name:
            return cls(classes=names, kind=cf.task, names=names, prompts=prompts, label_column=cf.label_column,
                       values={n: [str(v) for v in (cf.classes[n].values or [n])] for n in names})
        negatives = [negative_texts(cf, n) or [t for j, p in enumerate(prompts) if j != i for t in p]
                     for i, n in enumerate(names)]  # no_finding: contrasted with every other finding
        no_finding = [n for n in names if cf.classes[n].no_finding]
        return cls(classes=names, kind=cf.task, names=names + [cf.negative_templates[0].format(n) for n in names],
                   prompts=prompts + negatives, columns={n: cf.classes[n].column or n for n in names},
                   no_finding=no_finding[0] if no_finding else None, uncertain=cf.uncertain)

    @property
    def label_kind(self) -> LabelKind:
        """The single- or multi-label behaviour of this task (:data:`KINDS` by ``kind``)."""
        return KINDS[self.kind]

    @property
    def n_targets(self) -> int:
        """Text targets scored: one per class (single-label), a positive and a negative per class (multi-label)."""
        return len(self.classes) * self.label_kind.targets_per_class

    def to_dict(self) -> dict:
        """The task's fields as a plain dict (``Task(**task.to_dict())`` rebuilds it)."""
        return asdict(self)

    # -- labels
    def labels(self, frame) -> np.ndarray:
        """Class indices ``(N,)`` (-1: unlabelled) or a 0/1/NaN matrix ``(N, K)`` from a labelled table.

        Reads the columns :func:`medclip.eval.inputs.attach_labels` writes (``label`` / ``label/<name>``);
        a multi-label table may instead carry one column named like each condition.
        """
        if self.kind == SINGLE.name:
            if "label" not in frame.columns:
                raise DataError("table lacks the 'label' column (read it with medclip.eval.inputs."
                                "read_labelled_images)")
            y = frame["label"].to_numpy()
            if not np.issubdtype(y.dtype, np.integer) or len(y) and (y.min() < -1 or y.max() >= len(self.classes)):
                raise DataError(f"'label' must hold class indices 0..{len(self.classes) - 1} (-1: unlabelled)")
            return y.astype(np.int64)
        cols = [f"label/{c}" if f"label/{c}" in frame.columns else c for c in self.classes]
        missing = [c for c in cols if c not in frame.columns]
        if missing:
            raise DataError(f"manifest lacks label columns {missing} (multi-label task needs one 0/1 column "
                            f"per condition)")
        return frame[cols].to_numpy(dtype=float, copy=True)

    def manifest_labels(self, df, where: str = "manifest") -> dict[str, np.ndarray]:
        """The canonical label columns (``label`` or ``label/<condition>``) from a manifest's own columns.

        Values are mapped explicitly by :mod:`medclip.data.labels`. Single-label: the class whose
        ``values`` (default: its name, case-insensitive) hold the ``label_column`` cell; an empty cell is
        unlabelled (-1). Multi-label: 1/0 from ``1/0``, ``yes/no``, ``true/false``; empty is unknown (NaN);
        CheXpert's ``-1`` follows :attr:`uncertain`; an absent ``no_finding`` column is derived from the
        other conditions. A manifest without any label column is unlabelled (probabilities only).

        Raises:
            DataError: a cell that is no known value (one line naming the column and the values), or a
                manifest that has some conditions' columns but not others'.
        """
        from ..data.labels import binary_labels, class_labels

        if self.kind == SINGLE.name:
            if self.label_column not in df.columns:
                return {"label": np.full(len(df), -1)}
            classes = {n: self.values.get(n, [n]) for n in self.classes}
            try:
                return {"label": class_labels(df[self.label_column], self.label_column, classes, where)}
            except DataError as exc:
                raise DataError(f"{exc}; if the column holds codes such as 0/1, list them under each class's "
                                "'values' in the class file (e.g. values: [0])") from None
        columns = {n: self.columns.get(n, n) for n in self.classes}
        out = {n: binary_labels(df[c], c, self.uncertain, where=where).astype(float)
               for n, c in columns.items() if c in df.columns}
        if self.no_finding and self.no_finding not in out and out:
            others = np.stack(list(out.values()), 1)
            out[self.no_finding] = np.where((others == 1).any(1), 0.0, np.where((others == 0).all(1), 1.0, np.nan))
        missing = [columns[n] for n in self.classes if n not in out]
        if out and missing:
            raise DataError(f"{where}: no label column for {missing} (columns: {', '.join(map(str, df.columns))}); "
                            "add them, set 'column' in the class file, or drop those conditions")
        return {f"label/{n}": out.get(n, np.full(len(df), np.nan)) for n in self.classes}

    def labelled(self, y: np.ndarray) -> np.ndarray:
        """Boolean mask of the rows of ``y`` (from :meth:`labels`) with at least one known label."""
        return self.label_kind.labelled(y)

    def indicator(self, y: np.ndarray) -> np.ndarray:
        """Labels ``y`` as a 0/1/NaN matrix ``(N, K)``: one binary target per class/condition."""
        return self.label_kind.indicator(y, len(self.classes))

    def shot_groups(self, y: np.ndarray) -> list[tuple[np.ndarray, str]]:
        """Row masks to draw shots from: each class, or each condition's positives and negatives."""
        targets, values = self.indicator(y), self.label_kind.shot_values
        return [(targets[:, c] == v, name if len(values) == 1 else f"{'positive' if v else 'negative'} '{name}'")
                for c, name in enumerate(self.classes) for v in values]

    def shots(self, y) -> int:
        """Shots per class in a training set: the smallest class count (positives per condition if multi)."""
        return int(np.nan_to_num(self.indicator(np.asarray(y)), nan=0.0).sum(0).min())

    # -- scores
    def combine(self, target_logits: torch.Tensor) -> torch.Tensor:
        """Per-target logits ``(N, T)`` → per-class scores ``(N, K)`` (positive − negative for multi-label)."""
        k = len(self.classes)
        return target_logits if self.n_targets == k else target_logits[:, :k] - target_logits[:, k:]

    def probs(self, scores: torch.Tensor) -> torch.Tensor:
        """Softmax over classes (single) or one sigmoid per condition (multi)."""
        return self.label_kind.probs(scores)

    def loss(self, scores: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Cross-entropy (single) or BCE over known labels (multi)."""
        return self.label_kind.loss(scores, y)

    def target_matrix(self, y: np.ndarray) -> torch.Tensor:
        """Labels as one row per image over the T text targets (Tip-Adapter's cache values); unknown = 0.5."""
        pos = torch.as_tensor(np.nan_to_num(self.indicator(y), nan=0.5), dtype=torch.float32)
        return pos if self.n_targets == len(self.classes) else torch.cat([pos, 1 - pos], dim=1)

    def prompt_report(self) -> dict:
        """class -> its positive (and, multi-label, negative) prompts, for metrics files."""
        k = len(self.classes)
        return {n: {"positive": self.prompts[c], **({"negative": self.prompts[k + c]} if self.n_targets > k else {})}
                for c, n in enumerate(self.classes)}
