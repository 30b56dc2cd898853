"""Contrastive losses. Losses take feature tensors and the (exp'd) logit scale, never the model.

``clip_loss`` is CLIP's symmetric InfoNCE: the mean of the image→text and text→image cross-entropies
over the ``N × N`` similarity matrix scaled by ``logit_scale``; pair ``i`` is the positive of row ``i``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def clip_logits(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor):
    """Image→text and text→image logits ``(N, N)`` from L2-normalised features."""
    logits_per_image = logit_scale * image_features @ text_features.T
    return logits_per_image, logits_per_image.T


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of paired, L2-normalised features.

    Args:
        image_features: ``(N, D)`` image embeddings.
        text_features: ``(N, D)`` text embeddings, row ``i`` paired with image ``i``.
        logit_scale: scalar ``exp(log_scale)`` (the model's ``logit_scale`` output).

    Returns:
        Scalar loss ``(CE(image→text) + CE(text→image)) / 2``.
    """
    if image_features.shape != text_features.shape:
        raise ValueError(f"image and text features must have the same shape, got "
                         f"{tuple(image_features.shape)} and {tuple(text_features.shape)}")
    logits_per_image, logits_per_text = clip_logits(image_features, text_features, logit_scale)
    labels = torch.arange(image_features.shape[0], device=image_features.device)
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2
