"""Image tower: a timm trunk plus a projection head to the joint embedding.

timm builds the trunk (``vit_*_clip_*``, ``resnet50_clip`` / ``resnet101_clip`` with attention
pooling, or any other timm model) and adapts its stem for ``in_chans=1``. CLIP ResNets project inside
their attention pool, so their config uses ``proj: none`` and asks timm for ``num_classes=embed_dim``.
"""

from __future__ import annotations

import timm
import torch
from torch import nn

from .config import VisionConfig
from .errors import ConfigError


class VisionTower(nn.Module):
    """``trunk`` (timm) → ``head`` (projection) → ``(B, embed_dim)`` image embeddings.

    Args:
        config: the trunk name, image size, channels and projection kind.
        embed_dim: the joint embedding size.
    """

    def __init__(self, config: VisionConfig, embed_dim: int):
        super().__init__()
        self.config = config
        if config.hf_config:  # a wrapped transformers vision encoder (MedCLIP-ViT's Swin; see HFVisionTrunk)
            self.trunk = HFVisionTrunk(config.hf_config)
        else:
            self.trunk = create_trunk(config, num_classes=embed_dim if config.proj == "none" else 0)
        # proj "identity": the trunk's pooled features are the embedding (SigLIP: timm's MAP-pooled ViT)
        width = self.trunk.num_features
        if config.proj == "linear":
            self.head = nn.Linear(width, embed_dim, bias=False)
            nn.init.normal_(self.head.weight, std=width**-0.5)
        elif config.proj == "mlp":
            self.head = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, embed_dim))
        else:
            self.head = nn.Identity()
            if config.proj == "identity" and self.trunk.num_features != embed_dim:
                raise ConfigError(f"vision.proj identity needs embed_dim = the trunk's width "
                                  f"{self.trunk.num_features}, got {embed_dim}")

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.ndim != 4 or image.shape[1] != self.config.in_chans:
            raise ConfigError(f"image batch must be (B, {self.config.in_chans}, H, W) for this model, "
                              f"got {tuple(image.shape)}")
        return self.head(self.trunk(image))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.trunk.set_grad_checkpointing(enable)


def create_trunk(config: VisionConfig, num_classes: int) -> nn.Module:
    """Build the timm trunk for ``config`` (random init; weights are loaded separately).

    Raises:
        ConfigError: when timm does not know the model name or refuses the arguments.
    """
    if config.timm_model not in timm.list_models() and not timm.is_model(config.timm_model):
        raise ConfigError(f"vision.timm_model '{config.timm_model}' is not a timm model "
                          f"(see timm.list_models(), e.g. vit_base_patch16_clip_224, resnet50_clip)")
    kwargs = dict(config.timm_kwargs)
    if config.timm_model.startswith(("vit_", "eva", "deit")):
        kwargs.setdefault("img_size", config.image_size)
        if config.act == "quick_gelu":
            kwargs.setdefault("act_layer", "quick_gelu")
    if config.drop_path:
        kwargs["drop_path_rate"] = config.drop_path
    try:
        return timm.create_model(config.timm_model, pretrained=False, num_classes=num_classes,
                                 in_chans=config.in_chans, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"timm refused vision.timm_kwargs {kwargs} for '{config.timm_model}': {exc}") from None


class HFVisionTrunk(nn.Module):
    """A ``transformers`` vision encoder built from its config dict; ``forward`` returns its ``pooler_output``.

    Used where timm's model and the HF one differ in ways a key map cannot fix exactly (Swin's patch merging
    orders channels differently), so the published weights keep HF's own module.
    """

    def __init__(self, hf_config: dict):
        super().__init__()
        from transformers import AutoConfig, AutoModel

        from .config import check_foreign_config

        config = dict(hf_config)
        model_type = config.pop("model_type", None)
        if not model_type:
            raise ConfigError("vision.hf_config needs a model_type (e.g. swin)")
        check_foreign_config(config, "vision.hf_config")
        self.model = AutoModel.from_config(AutoConfig.for_model(model_type, **config))
        self.num_features = int(self.model.config.hidden_size)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=image).pooler_output

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        if enable:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            self.model.gradient_checkpointing_disable()
