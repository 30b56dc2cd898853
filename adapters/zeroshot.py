"""Zero-shot baseline (0 shots): :class:`medclip.eval.zeroshot.ZeroShotClassifier` as a few-shot method.

Scores are ``s · f Wᵀ`` combined by the task (softmax over classes, or the positive/negative prompt
pair per condition), i.e. the starting point every prompt-based few-shot method improves on.
"""

from __future__ import annotations

import torch

from medclip.eval.zeroshot import ZeroShotClassifier

from .base import FewShotMethod, register_method


@register_method
class ZeroShot(FewShotMethod):
    """CLIP zero-shot classification as a (training-free) few-shot method."""

    name = "zeroshot"
    defaults: dict = {}

    def _fit(self, train, val) -> None:
        self.classifier = ZeroShotClassifier(self.model, self.task, self.tokenizer)

    def _scores(self, test) -> torch.Tensor:
        if not hasattr(self, "classifier"):
            self._fit(None, None)
        return self.classifier.logits(self.image_features(test))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"text": self.classifier.targets}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.classifier = ZeroShotClassifier(self.model, self.task, targets=state["text"])
