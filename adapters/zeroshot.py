"""Zero-shot baseline (0 shots): the frozen model's prompt-ensemble classifier, nothing learned.

Scores are ``s · f Wᵀ`` combined by the task (softmax over classes, or the positive/negative prompt
pair per condition), i.e. the starting point every prompt-based few-shot method improves on.
"""

from __future__ import annotations

import torch

from .base import FewShotMethod, register_method


@register_method
class ZeroShot(FewShotMethod):
    """CLIP zero-shot classification as a (training-free) few-shot method."""

    name = "zeroshot"
    defaults: dict = {}

    def _fit(self, train, val) -> None:
        self.text = self.text_features().float().cpu()

    def _scores(self, test) -> torch.Tensor:
        if not hasattr(self, "text"):
            self.text = self.text_features().float().cpu()
        return self.task.combine(self.logit_scale() * self.image_features(test).float() @ self.text.t())

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"text": self.text}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.text = state["text"]
