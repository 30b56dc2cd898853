"""CLIP-Adapter (Gao et al., 2021): a bottleneck MLP on frozen image features, mixed back residually.

``f' = ratio * MLP(f) + (1 - ratio) * f`` with ``MLP = Linear(D, D/r) → ReLU → Linear(D/r, D) → ReLU``
(no biases, reduction ``r`` = 4, residual ``ratio`` = 0.2); the classifier is the frozen text tower's
prompt embeddings, scaled by the model's logit scale. Multi-label conditions get one sigmoid each
(of the positive-minus-negative prompt logit), trained with BCE. Image features come from the cache;
the optimiser is CoOp's SGD schedule.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .base import FewShotMethod, register_method
from .coop import SGDConfig, epochs_for_shots, train_sgd


class Adapter(nn.Module):
    """The bottleneck MLP with its residual mix."""

    def __init__(self, dim: int, reduction: int = 4, ratio: float = 0.2):
        super().__init__()
        self.ratio = ratio
        self.fc = nn.Sequential(nn.Linear(dim, dim // reduction, bias=False), nn.ReLU(inplace=True),
                                nn.Linear(dim // reduction, dim, bias=False), nn.ReLU(inplace=True))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.ratio * self.fc(features) + (1 - self.ratio) * features, dim=-1)


@dataclass
class ClipAdapterConfig(SGDConfig):
    """CLIP-Adapter's options: the bottleneck reduction and the residual ratio (share of adapted features)."""

    reduction: int = 4
    ratio: float = 0.2


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
    summary = "few-shot CLIP-Adapter (residual bottleneck on image features)"
    config_class = ClipAdapterConfig

    def empty_module(self, state=None) -> AdapterHead:
        text = state["text"] if state else self.text_features()
        with torch.random.fork_rng(devices=[]):  # nn.Linear's init draws from the global generator
            torch.manual_seed(self.seed)
            return AdapterHead(text, self.config.reduction, self.config.ratio)

    def _fit(self, train, val) -> None:
        y = torch.as_tensor(self.task.labels(train))
        features = self.image_features(train)
        self.module = self.empty_module()
        self.module.train()
        scale = self.logit_scale()

        def loss(idx: torch.Tensor) -> torch.Tensor:
            return self.task.loss(self.task.combine(self.module(features[idx], scale)), y[idx])

        train_sgd(self, list(self.module.adapter.parameters()), len(y), loss,
                  self.config.epochs or epochs_for_shots(self.task.shots(y.numpy())))

    def _scores(self, test) -> torch.Tensor:
        return self.task.combine(self.module(self.image_features(test), self.logit_scale()))
