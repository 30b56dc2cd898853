"""CLIP-Adapter (Gao et al., 2021): a bottleneck MLP on frozen image features, mixed back residually.

``f' = ratio * MLP(f) + (1 - ratio) * f`` with ``MLP = Linear(D, D/r) → ReLU → Linear(D/r, D) → ReLU``
(no biases, reduction ``r`` = 4, residual ``ratio`` = 0.2); the classifier is the frozen text tower's
prompt embeddings, scaled by the model's logit scale. Multi-label conditions get one sigmoid each
(of the positive-minus-negative prompt logit), trained with BCE. Image features come from the cache;
the optimiser is CoOp's SGD schedule.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import FewShotMethod, register_method
from .coop import SGD_DEFAULTS, epochs_for_shots, train_epochs


class Adapter(nn.Module):
    """The bottleneck MLP with its residual mix."""

    def __init__(self, dim: int, reduction: int = 4, ratio: float = 0.2):
        super().__init__()
        self.ratio = ratio
        self.fc = nn.Sequential(nn.Linear(dim, dim // reduction, bias=False), nn.ReLU(inplace=True),
                                nn.Linear(dim // reduction, dim, bias=False), nn.ReLU(inplace=True))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.ratio * self.fc(features) + (1 - self.ratio) * features, dim=-1)


@register_method
class ClipAdapter(FewShotMethod):
    """Residual bottleneck adapter on image features, text-prompt classifier."""

    name = "clip-adapter"
    defaults = {"reduction": 4, "ratio": 0.2, **SGD_DEFAULTS}

    def build_adapter(self, dim: int) -> Adapter:
        with torch.random.fork_rng(devices=[]):  # nn.Linear's init draws from the global generator
            torch.manual_seed(self.seed)
            return Adapter(dim, self.hparams["reduction"], self.hparams["ratio"])

    def _fit(self, train, val) -> None:
        y = torch.as_tensor(self.task.labels(train))
        features = self.image_features(train)
        self.text = self.text_features().float().cpu()
        self.adapter = self.build_adapter(features.shape[1])
        self.adapter.train()
        epochs = self.hparams["epochs"] or epochs_for_shots(self.task.shots(y.numpy()))
        scale = self.logit_scale()

        def step(idx: torch.Tensor) -> torch.Tensor:
            scores = self.task.combine(scale * self.adapter(features[idx]) @ self.text.t())
            return self.task.loss(scores, y[idx])

        train_epochs(self, list(self.adapter.parameters()), len(y), step, epochs)
        self.adapter.eval()
        self.budget = {"epochs": epochs}

    def _scores(self, test) -> torch.Tensor:
        return self.task.combine(self.logit_scale() * self.adapter(self.image_features(test)) @ self.text.t())

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {**{f"adapter.{k}": v for k, v in self.adapter.state_dict().items()}, "text": self.text}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.text = state["text"]
        self.adapter = self.build_adapter(self.text.shape[1])
        self.adapter.load_state_dict({k[len("adapter."):]: v for k, v in state.items() if k.startswith("adapter.")})
        self.adapter.eval()
