"""MedCLIP-ResNet's image and text forward, re-implemented from a reading of github.com/RyanWangZf/MedCLIP
(``medclip/modeling_medclip.py``, ``constants.py``; commit 9c3396f20d5d54e4fae241b8cb06ca45848e98c9).

What the upstream code does, and this module reproduces (the names are upstream's, so ``state_dict()`` is
its ``pytorch_model.bin`` layout):

* ``vision_model.model``: ``torchvision`` ResNet-50 with ``fc = Linear(2048, 512, bias=False)``; 1-channel
  input repeated to 3 channels;
* ``text_model.model``: a BERT called with ``input_ids`` and ``attention_mask`` and ``output_hidden_states``;
  the embedding is ``stack(hidden_states[1], hidden_states[2], hidden_states[-1])`` averaged over **all**
  positions (padding included) and then over the three layers, through ``projection_head`` (no bias);
* ``logit_scale`` clamped to [0, 4.6052] before ``exp``; logits = scale · normalised image · normalised text.
"""

from __future__ import annotations

import torch
from torch import nn


class _Vision(nn.Module):
    def __init__(self, layers, embed_dim: int):
        super().__init__()
        from torchvision.models.resnet import Bottleneck, ResNet

        self.model = ResNet(Bottleneck, list(layers))
        self.model.fc = nn.Linear(self.model.fc.in_features, embed_dim, bias=False)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.shape[1] == 1:
            pixel_values = pixel_values.repeat((1, 3, 1, 1))
        return self.model(pixel_values)


class _Text(nn.Module):
    def __init__(self, bert_config, embed_dim: int):
        super().__init__()
        from transformers import BertModel

        self.model = BertModel(bert_config)
        self.projection_head = nn.Linear(bert_config.hidden_size, embed_dim, bias=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        states = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True).hidden_states
        embed = torch.stack([states[1], states[2], states[-1]]).permute(1, 0, 2, 3).mean(2).mean(1)
        return self.projection_head(embed)


class MedCLIPReference(nn.Module):
    """``MedCLIPModel(vision_cls=MedCLIPVisionModel)`` with small sizes."""

    def __init__(self, bert_config, layers=(1, 1, 1, 1), embed_dim: int = 32):
        super().__init__()
        self.vision_model = _Vision(layers, embed_dim)
        self.text_model = _Text(bert_config, embed_dim)
        self.logit_scale = nn.Parameter(torch.log(torch.tensor(1 / 0.07)))

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.vision_model(pixel_values)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.text_model(input_ids, attention_mask)

    def logits(self, pixel_values, input_ids, attention_mask) -> torch.Tensor:
        img = nn.functional.normalize(self.encode_image(pixel_values), dim=-1)
        txt = nn.functional.normalize(self.encode_text(input_ids, attention_mask), dim=-1)
        return self.logit_scale.data.clamp(0, 4.6052).exp() * img @ txt.T


class _VisionViT(nn.Module):
    """Upstream's ``MedCLIPVisionModelViT``: an HF Swin (``microsoft/swin-tiny-patch4-window7-224``) whose
    ``pooler_output`` goes through ``projection_head = Linear(768, 512, bias=False)``."""

    def __init__(self, swin_config, embed_dim: int):
        super().__init__()
        from transformers import SwinModel

        self.model = SwinModel(swin_config)
        self.projection_head = nn.Linear(self.model.config.hidden_size, embed_dim, bias=False)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.shape[1] == 1:
            pixel_values = pixel_values.repeat((1, 3, 1, 1))
        return self.projection_head(self.model(pixel_values)["pooler_output"])


class MedCLIPViTReference(MedCLIPReference):
    """``MedCLIPModel(vision_cls=MedCLIPVisionModelViT)`` with small sizes."""

    def __init__(self, bert_config, swin_config, embed_dim: int = 32):
        super().__init__(bert_config, embed_dim=embed_dim)
        self.vision_model = _VisionViT(swin_config, embed_dim)
