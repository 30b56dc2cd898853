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

import numpy as np
import torch

from .base import FewShotMethod, register_method, selection_score


@register_method
class TipAdapter(FewShotMethod):
    """Training-free cache model (optionally fine-tuned keys: Tip-Adapter-F)."""

    name = "tip-adapter"
    defaults = {"alpha": 1.0, "beta": 1.0, "search": True, "beta_max": 7.0, "alpha_max": 3.0, "grid": 12,
                "finetune": False, "epochs": 20, "lr": 1e-3, "eps": 1e-4, "batch_size": 32}

    def logits(self, features: torch.Tensor, keys: torch.Tensor, alpha: float, beta: float,
               leave_out: torch.Tensor | None = None) -> torch.Tensor:
        """Per-class scores ``(N, K)`` (the Tip formula, then the task's positive/negative pairing).

        ``leave_out[i]`` is the cache row of query ``i`` itself, excluded from its affinities (fine-tuning).
        """
        weights = torch.exp(-beta * (1 - features @ keys.t()))
        if leave_out is not None:
            weights = weights.index_put((torch.arange(len(leave_out)), leave_out), torch.zeros(()))
        cache = weights @ self.values
        return self.task.combine(self.scale * features @ self.text.t() + alpha * cache)

    def _fit(self, train, val) -> None:
        y = self.task.labels(train)
        self.keys = self.image_features(train).float()
        self.values = self.task.target_matrix(y)
        self.text = self.text_features().float().cpu()
        self.scale = self.logit_scale()
        self.selected = {"alpha": float(self.hparams["alpha"]), "beta": float(self.hparams["beta"])}
        has_val = val is not None and len(val) > 0
        if has_val and self.hparams["search"]:
            self.selected = self._search(val)
        if self.hparams["finetune"]:
            self._finetune(y)
            if has_val and self.hparams["search"]:
                self.selected = self._search(val)

    @torch.no_grad()
    def _search(self, val) -> dict:
        features, y = self.image_features(val).float(), self.task.labels(val)
        n = self.hparams["grid"]
        betas = np.linspace(self.hparams["beta_max"] / n, self.hparams["beta_max"], n)
        alphas = np.linspace(self.hparams["alpha_max"] / n, self.hparams["alpha_max"], n)
        best, best_score = None, None
        for beta in betas:
            for alpha in alphas:
                score = selection_score(self.task, self.logits(features, self.keys, alpha, beta), y)
                if best_score is None or score > best_score:
                    best, best_score = {"alpha": float(alpha), "beta": float(beta)}, score
        return best

    def _finetune(self, y: np.ndarray) -> None:
        from tqdm.auto import tqdm

        hp = self.hparams
        keys = torch.nn.Parameter(self.keys.clone())
        target = torch.as_tensor(y)
        n = len(target)
        steps = hp["epochs"] * ((n + hp["batch_size"] - 1) // hp["batch_size"])
        optimizer = torch.optim.AdamW([keys], lr=hp["lr"], eps=hp["eps"])
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
        generator = self.generator()
        features = self.keys  # the training shots' own (cached) features
        for _ in tqdm(range(hp["epochs"]), desc="tip-adapter-f", disable=not self.progress, leave=False):
            order, losses = torch.randperm(n, generator=generator), []
            for start in range(0, n, hp["batch_size"]):
                idx = order[start:start + hp["batch_size"]]
                scores = self.logits(features[idx], keys, self.selected["alpha"], self.selected["beta"], idx)
                loss = self.task.loss(scores, target[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                losses.append(float(loss.detach()))
            self.history.append(sum(losses) / len(losses))
        self.keys = keys.detach()
        self.budget = {"epochs": hp["epochs"]}

    def _scores(self, test) -> torch.Tensor:
        features = self.image_features(test).float()
        return self.logits(features, self.keys, self.selected["alpha"], self.selected["beta"])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"keys": self.keys, "values": self.values, "text": self.text,
                "scale": torch.tensor(self.scale, dtype=torch.float64)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.keys, self.values, self.text = state["keys"], state["values"], state["text"]
        self.scale = float(state["scale"])
