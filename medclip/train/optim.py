"""AdamW with open_clip's weight-decay rule and a cosine schedule with linear warmup."""

from __future__ import annotations

import math

import torch
from torch import nn

from .accel import fused_adamw


def exclude_from_decay(name: str, param: nn.Parameter, decay_embeddings: bool = False) -> bool:
    """open_clip's rule: no decay on 1-D parameters (biases, norm weights, ``logit_scale``, ...).

    Token and positional embeddings (and a ViT's ``cls_token``/``pos_embed``) are excluded too unless
    ``decay_embeddings``.
    """
    if param.ndim < 2 or "bias" in name or "logit_scale" in name or ".ln" in name or "norm" in name:
        return True
    is_embedding = any(key in name for key in ("embedding", "pos_embed", "cls_token", "class_embedding"))
    return is_embedding and not decay_embeddings


def param_groups(model: nn.Module, weight_decay: float, decay_embeddings: bool = False,
                 tower_lr: dict | None = None) -> list[dict]:
    """AdamW groups (decayed / not decayed) over the trainable parameters, in model order.

    ``tower_lr`` (``{"visual": lr, "text": lr}``, None values skipped) gives those towers their own learning
    rate (groups with an ``lr`` key); the other parameters use the optimizer's ``lr``.
    """
    towers = {k: v for k, v in (tower_lr or {}).items() if v is not None}
    buckets: dict = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            tower = name.split(".", 1)[0] if name.split(".", 1)[0] in towers else None
            buckets.setdefault((tower, not exclude_from_decay(name, param, decay_embeddings)), []).append(param)
    groups = [{"params": [], "weight_decay": 0.0}, {"params": [], "weight_decay": weight_decay}]
    groups[0]["params"] = buckets.pop((None, False), [])
    groups[1]["params"] = buckets.pop((None, True), [])
    for (tower, decayed), params in buckets.items():
        groups.append({"params": params, "weight_decay": weight_decay if decayed else 0.0, "lr": towers[tower]})
    return groups


def build_optimizer(model: nn.Module, cfg) -> torch.optim.AdamW:
    """AdamW over ``param_groups`` with the betas/eps/lr of a :class:`~medclip.train.config.TrainConfig`."""
    groups = param_groups(model, cfg.weight_decay, cfg.decay_embeddings,
                          {"visual": getattr(cfg, "lr_image", None), "text": getattr(cfg, "lr_text", None)})
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=fused_adamw(model))


def cosine_lambda(warmup: int, total_steps: int):
    """Multiplier of the peak lr: linear warmup over ``warmup`` steps, then cosine decay to 0 at ``total_steps``."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, warmup: int, total_steps: int):
    """``LambdaLR`` stepping once per optimizer step (its state is just the step counter)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_lambda(warmup, total_steps))
