"""Linear probe: scikit-learn logistic regression on frozen image features (CoOp's protocol).

The inverse regularisation ``C`` is chosen on the validation split: a coarse sweep over
``1e6, 1e4, ..., 1e-6`` then a binary search between the best value's neighbours (as CoOp's
``linear-probe`` script). Single-label tasks fit one multinomial model (lbfgs, ``max_iter`` 1000);
multi-label tasks fit one-vs-rest, one binary model per condition on the rows where it is known.
Predictions come from the stored coefficients, so a saved probe predicts exactly as the fitted one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .base import Buffers, FewShotMethod, register_method, selection_score


@dataclass
class ProbeConfig:
    """The probe's options: lbfgs iterations, binary-search steps for ``C``, or a fixed ``C``."""

    max_iter: int = 1000
    search_steps: int = 8
    C: float | None = None


@register_method
class LinearProbe(FewShotMethod):
    """Logistic regression on image features, ``C`` selected on validation."""

    name = "probe"
    summary = "few-shot linear probe (logistic regression, C chosen on validation)"
    config_class = ProbeConfig

    def _fit(self, train, val) -> None:
        x = self.image_features(train).double().numpy()
        y = self.task.labels(train)
        if self.config.C is not None or val is None or len(val) == 0:
            c = float(self.config.C or 1.0)
        else:
            xv, yv = self.image_features(val).double().numpy(), self.task.labels(val)
            c = self._search_c(x, y, xv, yv)
        coef, intercept = self._fit_c(x, y, c)
        self.module = Buffers(coef=torch.from_numpy(coef), intercept=torch.from_numpy(intercept))
        self.selected = {"C": c}
        self.budget = {"max_iter": self.config.max_iter}

    def _search_c(self, x, y, xv, yv) -> float:
        def score(c: float):
            coef, intercept = self._fit_c(x, y, c)
            return selection_score(self.task, self._logits(xv, coef, intercept), yv)

        coarse = [10.0 ** e for e in range(6, -7, -2)]
        scores = [score(c) for c in coarse]
        best = max(range(len(coarse)), key=lambda i: scores[i])
        c_best, s_best = coarse[best], scores[best]
        left, right = coarse[min(best + 1, len(coarse) - 1)], coarse[max(best - 1, 0)]
        for _ in range(self.config.search_steps):
            candidates = [np.sqrt(left * c_best), np.sqrt(right * c_best)]
            cand_scores = [score(c) for c in candidates]
            i = 0 if cand_scores[0] >= cand_scores[1] else 1
            if cand_scores[i] > s_best:
                if i == 0:
                    right, c_best = c_best, candidates[0]
                else:
                    left, c_best = c_best, candidates[1]
                s_best = cand_scores[i]
            else:
                left, right = candidates
        return float(c_best)

    def _fit_c(self, x: np.ndarray, y: np.ndarray, c: float) -> tuple[np.ndarray, np.ndarray]:
        """Coefficients ``(K, D)`` and intercepts ``(K,)`` at inverse regularisation ``c``."""
        fit = {"single": self._fit_multinomial, "multi": self._fit_per_condition}[self.task.kind]
        return fit(x, y, c)

    def _regression(self, c: float):
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=c, solver="lbfgs", max_iter=self.config.max_iter, random_state=self.seed)

    def _fit_multinomial(self, x: np.ndarray, y: np.ndarray, c: float) -> tuple[np.ndarray, np.ndarray]:
        k = len(self.task.classes)
        present = np.unique(y)
        coef, intercept = np.zeros((k, x.shape[1])), np.full(k, -1e4)
        if len(present) == 1:  # a one-class training set: that class always wins
            intercept[present[0]] = 0.0
            return coef, intercept
        model = self._regression(c).fit(x, y)
        if len(present) == 2:  # sklearn's binary model has one row: logit of classes_[1] vs classes_[0]
            coef[present[1]], intercept[present[1]] = model.coef_[0], model.intercept_[0]
            intercept[present[0]] = 0.0
        else:
            coef[present], intercept[present] = model.coef_, model.intercept_
        return coef, intercept

    def _fit_per_condition(self, x: np.ndarray, y: np.ndarray, c: float) -> tuple[np.ndarray, np.ndarray]:
        k = len(self.task.classes)
        coef, intercept = np.zeros((k, x.shape[1])), np.zeros(k)
        for j in range(k):
            known = ~np.isnan(y[:, j])
            yj = y[known, j].astype(int)
            if known.sum() == 0 or yj.min() == yj.max():  # nothing to separate: the prior
                prior = float(np.clip(yj.mean() if known.any() else 0.5, 1e-4, 1 - 1e-4))
                intercept[j] = np.log(prior / (1 - prior))
                continue
            model = self._regression(c).fit(x[known], yj)
            coef[j], intercept[j] = model.coef_[0], model.intercept_[0]
        return coef, intercept

    @staticmethod
    def _logits(x: np.ndarray, coef: np.ndarray, intercept: np.ndarray) -> np.ndarray:
        return x @ coef.T + intercept

    def _scores(self, test) -> torch.Tensor:
        x = self.image_features(test).double().numpy()
        return torch.from_numpy(self._logits(x, self.module.coef.numpy(), self.module.intercept.numpy()))
