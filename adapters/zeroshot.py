"""Zero-shot baseline (0 shots): :class:`medclip.eval.zeroshot.ZeroShotClassifier` as a few-shot method.

Scores are ``s · f Wᵀ`` combined by the task (softmax over classes, or the positive/negative prompt
pair per condition), i.e. the starting point every prompt-based few-shot method improves on.
"""

from __future__ import annotations

import torch

from medclip.eval.zeroshot import ZeroShotClassifier

from .base import Buffers, FewShotMethod, register_method


@register_method
class ZeroShot(FewShotMethod):
    """CLIP zero-shot classification as a (training-free) few-shot method."""

    name = "zeroshot"
    summary = "zero-shot baseline (0 shots): the prompt-ensemble classifier"

    def _fit(self, train, val) -> None:
        self.module = Buffers(text=ZeroShotClassifier(self.model, self.task, self.tokenizer).targets)

    def _scores(self, test) -> torch.Tensor:
        if self.module is None:
            self._fit(None, None)
        return ZeroShotClassifier(self.model, self.task, targets=self.module.text).logits(self.image_features(test))
