"""CLIP-Adapter (Gao et al., 2021): a bottleneck MLP on frozen image features, mixed back residually.

``f' = ratio * MLP(f) + (1 - ratio) * f`` with ``MLP = Linear(D, D/r) → ReLU → Linear(D/r, D) → ReLU``
(no biases, reduction ``r`` = 4, residual ``ratio``: the paper's 0.2, or chosen among 0.2-0.8 on the
validation shots when there are enough, see :mod:`adapters.selection`); the classifier is the frozen text tower's
prompt embeddings, scaled by the model's logit scale. Multi-label conditions get one sigmoid each
(of the positive-minus-negative prompt logit), trained with BCE. Image features come from the cache;
the optimiser is CoOp's SGD schedule.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .base import FewShotMethod, register_method
from .coop import SGDConfig, epochs_for_shots, train_sgd
from .selection import enough, selection_score


class Adapter(nn.Module):
    """The bottleneck MLP with its residual mix."""

    def __init__(self, dim: int, reduction: int = 4, ratio: float = 0.2):
        super().__init__()
        self.register_buffer("ratio", torch.tensor(float(ratio)))  # saved with the weights
        self.fc = nn.Sequential(nn.Linear(dim, dim // reduction, bias=False), nn.ReLU(inplace=True),
                                nn.Linear(dim // reduction, dim, bias=False), nn.ReLU(inplace=True))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.ratio * self.fc(features) + (1 - self.ratio) * features, dim=-1)


DEFAULT_RATIO = 0.2  # the paper's
RATIOS = [0.2, 0.4, 0.6, 0.8]


@dataclass
class ClipAdapterConfig(SGDConfig):
    """CLIP-Adapter's options: the bottleneck reduction and the residual ratio (share of adapted features).

    ``ratio`` None chooses among ``ratios`` on the validation shots when there are enough
    (:data:`~adapters.selection.MIN_VAL_PER_CLASS` per class), else uses the paper's 0.2.
    """

    reduction: int = 4
    ratio: float | None = None
    ratios: list = field(default_factory=lambda: list(RATIOS))


class AdapterHead(nn.Module):
    """The learned adapter plus the frozen prompt embeddings it classifies against."""

    def __init__(self, text: torch.Tensor, reduction: int, ratio: float):
        super().__init__()
        self.adapter = Adapter(text.shape[1], reduction, ratio)
        self.register_buffer("text", text.detach().float().cpu().clone())

    def forward(self, features: torch.Tensor, scale: float) -> torch.Tensor:
        return scale * self.adapter(features) @ self.text.t()


@register_method
class ClipAdapter(FewShotMethod):
    """Residual bottleneck adapter on image features, text-prompt classifier."""

    name = "clip-adapter"
    summary = "few-shot CLIP-Adapter (residual bottleneck on image features; --ratio, else chosen on validation)"
    config_class = ClipAdapterConfig

    def empty_module(self, state=None, ratio: float = DEFAULT_RATIO) -> AdapterHead:
        text = state["text"] if state else self.text_features()
        with torch.random.fork_rng(devices=[]):  # nn.Linear's init draws from the global generator
            torch.manual_seed(self.seed)
            return AdapterHead(text, self.config.reduction, ratio)

    def candidates(self, val) -> list[float]:
        """The residual ratios to fit: the configured one, the validation candidates, or the paper's."""
        if self.config.ratio is not None:
            return [self.config.ratio]
        return list(self.config.ratios) if enough(self.task, val) else [DEFAULT_RATIO]

    def _fit(self, train, val) -> None:
        y = torch.as_tensor(self.task.labels(train))
        features = self.image_features(train)
        scale = self.logit_scale()
        fits, ratios = [], self.candidates(val)
        for ratio in ratios:
            self.history, self.module = [], self.empty_module(ratio=ratio)
            self.module.train()

            def loss(idx: torch.Tensor) -> torch.Tensor:
                return self.task.loss(self.task.combine(self.module(features[idx], scale)), y[idx])

            train_sgd(self, list(self.module.adapter.parameters()), len(y), loss,
                      self.config.epochs or epochs_for_shots(self.task.shots(y.numpy())))
            self.module.eval()
            fits.append((self._val_score(val) if len(ratios) > 1 else (0.0, 0.0), ratio, self.module, self.history))
        _, ratio, self.module, self.history = max(fits, key=lambda fit: fit[0])  # ties: the first (smaller) ratio
        self.selected["ratio"] = ratio

    @torch.no_grad()
    def _val_score(self, val) -> tuple[float, float]:
        return selection_score(self.task, self._scores(val).double().numpy(), self.task.labels(val))

    def _scores(self, test) -> torch.Tensor:
        return self.task.combine(self.module(self.image_features(test), self.logit_scale()))
