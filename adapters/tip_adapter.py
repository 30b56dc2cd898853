"""Tip-Adapter (Zhang et al., 2022): a training-free key-value cache of the few shots.

``logits = s · f Wᵀ + α · exp(−β (1 − f Kᵀ)) V`` where ``f`` are test image features, ``W`` the
prompt embeddings (one row per text target), ``s`` the model's logit scale, ``K`` the normalised
features of the training shots and ``V`` their labels over the text targets (one-hot for single-label;
for multi-label the positive prompt of a condition gets ``y`` and its negative ``1 − y``). ``α`` and
``β`` are chosen on the validation split by a grid search (Tip's ranges: β up to 7, α up to 3).

Tip-Adapter-F (``finetune: true``) makes the keys a parameter and trains them with AdamW (lr 1e-3,
eps 1e-4, cosine) for 20 epochs on cached features, then searches α and β again. The paper trains on
augmented views of the shots, which never coincide with their own keys; with cached (unaugmented)
features a shot would match its own key exactly and the loss would be ~0 from the start, so each shot
is scored leave-one-out (its own key excluded) instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .base import Buffers, FewShotMethod, register_method, selection_score
from .loop import Schedule, optimise, steps_for_epochs


@dataclass
class TipAdapterConfig:
    """Tip-Adapter's options: the cache mix (``alpha``, ``beta``), their grid search on validation, and
    Tip-Adapter-F's key fine-tuning (``finetune``, AdamW ``lr``/``eps``, ``epochs``, ``batch_size``)."""

    alpha: float = 1.0
    beta: float = 1.0
    search: bool = True
    beta_max: float = 7.0
    alpha_max: float = 3.0
    grid: int = 12
    finetune: bool = False
    epochs: int = 20
    lr: float = 1e-3
    eps: float = 1e-4
    batch_size: int = 32


@register_method
class TipAdapter(FewShotMethod):
    """Training-free cache model (optionally fine-tuned keys: Tip-Adapter-F)."""

    name = "tip-adapter"
    summary = "few-shot Tip-Adapter cache model (--finetune: Tip-Adapter-F)"
    config_class = TipAdapterConfig

    def logits(self, features: torch.Tensor, keys: torch.Tensor, alpha: float, beta: float,
               leave_out: torch.Tensor | None = None) -> torch.Tensor:
        """Per-class scores ``(N, K)`` (the Tip formula, then the task's positive/negative pairing).

        ``leave_out[i]`` is the cache row of query ``i`` itself, excluded from its affinities (fine-tuning).
        """
        weights = torch.exp(-beta * (1 - features @ keys.t()))
        if leave_out is not None:
            weights = weights.index_put((torch.arange(len(leave_out)), leave_out), torch.zeros(()))
        cache = weights @ self.module.values
        return self.task.combine(float(self.module.scale) * features @ self.module.text.t() + alpha * cache)

    def _fit(self, train, val) -> None:
        y = self.task.labels(train)
        self.module = Buffers(keys=self.image_features(train).float(), values=self.task.target_matrix(y),
                              text=self.text_features().float().cpu(),
                              scale=torch.tensor(self.logit_scale(), dtype=torch.float64))
        self.selected = {"alpha": float(self.config.alpha), "beta": float(self.config.beta)}
        has_val = val is not None and len(val) > 0
        if has_val and self.config.search:
            self.selected = self._search(val)
        if self.config.finetune:
            self._finetune(y)
            if has_val and self.config.search:
                self.selected = self._search(val)

    @torch.no_grad()
    def _search(self, val) -> dict:
        features, y = self.image_features(val).float(), self.task.labels(val)
        n = self.config.grid
        betas = np.linspace(self.config.beta_max / n, self.config.beta_max, n)
        alphas = np.linspace(self.config.alpha_max / n, self.config.alpha_max, n)
        best, best_score = None, None
        for beta in betas:
            for alpha in alphas:
                score = selection_score(self.task, self.logits(features, self.module.keys, alpha, beta), y)
                if best_score is None or score > best_score:
                    best, best_score = {"alpha": float(alpha), "beta": float(beta)}, score
        return best

    def _finetune(self, y: np.ndarray) -> None:
        hp = self.config
        keys = torch.nn.Parameter(self.module.keys.clone())
        target = torch.as_tensor(y)
        features = self.module.keys.clone()  # the training shots' own (cached) features
        steps = steps_for_epochs(len(target), hp.batch_size, hp.epochs)
        optimizer = torch.optim.AdamW([keys], lr=hp.lr, eps=hp.eps)
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
        schedule = Schedule(steps, hp.batch_size, scheduler=cosine)

        def loss(idx: torch.Tensor) -> torch.Tensor:
            scores = self.logits(features[idx], keys, self.selected["alpha"], self.selected["beta"], idx)
            return self.task.loss(scores, target[idx])

        optimise(self, optimizer, len(target), loss, schedule)
        self.module.keys = keys.detach()
        self.budget = {"epochs": hp.epochs}

    def _scores(self, test) -> torch.Tensor:
        features = self.image_features(test).float()
        return self.logits(features, self.module.keys, self.selected["alpha"], self.selected["beta"])
