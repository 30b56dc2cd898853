"""CLIP-LoRA (Zanella & Ben Ayed, 2024): low-rank adapters on the attention projections, via peft.

Targets per tower kind (``LoraConfig.target_modules`` is a regex over module names):

* medclip's CLIP text tower: ``q_proj``, ``k_proj``, ``v_proj`` of every block (as CLIP-LoRA);
* a Hugging Face BERT-style text tower: ``query``, ``key``, ``value``;
* a timm ViT image tower: the fused ``qkv`` projection. This differs from CLIP-LoRA, which adapts
  separate q/k/v matrices: one rank-r update of the fused matrix is *not* three independent rank-r
  updates (it shares the down-projection across q, k and v);
* a wrapped Hugging Face Swin image tower (MedCLIP-ViT): the separate ``q_proj``, ``k_proj``, ``v_proj`` of
  every block's window attention (transformers 4.x names them ``self.query``/``key``/``value``; both match);
* CNN image towers get no LoRA: the text side is adapted and image features come from the cache.

``encoder: auto`` adapts both towers of a ViT or Swin model and the text tower of a CNN model; ``text`` keeps
the image tower frozen (cached features, fast on CPU). Defaults follow CLIP-LoRA: r 2, alpha 1,
dropout 0.25, AdamW lr 2e-4, weight decay 1e-2, batch 32, 500 × shots iterations with cosine decay
to 1e-6 (``max_iters`` caps it). Only the adapter is saved, in peft's format
(``adapter_config.json`` + ``adapter_model.safetensors``), and it re-attaches to the base model.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch

from medclip.errors import ConfigError
from medclip.eval.prompts import encode_prompt_sets
from medclip.paths import follow_umask

from .base import FewShotMethod, register_method
from .loop import Schedule, optimise

# HF text towers: BERT-style query/key/value, SigLIP's self_attn.q_proj/k_proj/v_proj
TEXT_TARGETS = {"clip": r"text\.blocks\.\d+\.attn\.(q_proj|k_proj|v_proj)",
                "hf": r"text\..*\.(query|key|value|self_attn\.q_proj|self_attn\.k_proj|self_attn\.v_proj)"}
VISION_TARGETS = {"vit": r"visual\.trunk\.blocks\.\d+\.attn\.qkv",
                  "swin": r"visual\.trunk\.model\.encoder\.layers\.\d+\.blocks\.\d+\.attention\."
                          r"(q_proj|k_proj|v_proj|self\.query|self\.key|self\.value)"}


def tower_kinds(model) -> tuple[str, str]:
    """(text kind ``clip``/``hf``, image kind ``vit``/``swin``/``cnn``) of a medclip model."""
    text = "hf" if getattr(model.config.text, "hf_model_dir", None) else "clip"
    hf_vision = getattr(model.config.vision, "hf_config", None) or {}
    names = [name for name, _ in model.visual.named_modules()]
    if hf_vision.get("model_type") == "swin":
        vision = "swin"
    elif any(n.startswith("trunk.blocks.") and n.endswith("attn.qkv") for n in names):
        vision = "vit"
    else:
        vision = "cnn"
    return text, vision


def lora_target_regex(model, encoder: str = "auto") -> tuple[str, bool]:
    """The peft ``target_modules`` regex for ``encoder`` (auto/text/vision/both) and whether the image tower is
    adapted (then image features cannot be cached)."""
    if encoder not in ("auto", "text", "vision", "both"):
        raise ConfigError(f"lora encoder must be auto, text, vision or both, got '{encoder}'")
    text_kind, vision_kind = tower_kinds(model)
    if encoder == "auto":
        encoder = "text" if vision_kind == "cnn" else "both"
    if encoder in ("vision", "both") and vision_kind == "cnn":
        raise ConfigError("LoRA is not applied to CNN image towers; use encoder: text (cached image features)")
    parts = []
    if encoder in ("text", "both"):
        parts.append(TEXT_TARGETS[text_kind])
    if encoder in ("vision", "both"):
        parts.append(VISION_TARGETS[vision_kind])
    return "(" + "|".join(parts) + ")", encoder in ("vision", "both")


@dataclass
class LoraConfig:
    """CLIP-LoRA's options: rank ``r``, ``alpha``, ``dropout``, AdamW ``lr``/``weight_decay``, ``batch_size``,
    ``iters_per_shot`` (capped by ``max_iters``), cosine decay to ``min_lr``, which towers (``encoder``)."""

    r: int = 2
    alpha: float = 1
    dropout: float = 0.25
    lr: float = 2e-4
    weight_decay: float = 1e-2
    batch_size: int = 32
    iters_per_shot: int = 500
    max_iters: int | None = None
    min_lr: float = 1e-6
    encoder: str = "auto"


@register_method
class Lora(FewShotMethod):
    """Low-rank adapters on the towers' attention projections (peft), prompt classifier."""

    name = "lora"
    summary = "few-shot CLIP-LoRA via peft (adapter weights only)"
    config_class = LoraConfig

    def _attach(self, folder: str | None = None):
        import peft

        regex, self.adapts_vision = lora_target_regex(self.model, self.config.encoder)
        base = copy.deepcopy(self.model)  # peft rewrites modules in place; the caller's model stays untouched
        if folder is not None:
            return peft.PeftModel.from_pretrained(base, folder)
        config = peft.LoraConfig(r=self.config.r, lora_alpha=self.config.alpha, lora_dropout=self.config.dropout,
                                 target_modules=regex, bias="none")
        return peft.get_peft_model(base, config)

    @property
    def clip(self):
        """The adapted CLIP model inside the peft wrapper."""
        return self.module.base_model.model

    def _images(self, frame) -> torch.Tensor:
        fn, _ = self.cache._transform_for(self.model)
        return torch.stack([fn(p) for p in frame["image"].tolist()])

    def _batch_features(self, images, idx) -> torch.Tensor:
        if self.adapts_vision:
            return self.clip.encode_image(images[idx].to(self.clip.logit_scale.device))
        return images[idx]

    def _fit(self, train, val) -> None:
        hp = self.config
        self.module = self._attach()
        y = torch.as_tensor(self.task.labels(train))
        images = self._images(train) if self.adapts_vision else self.image_features(train)
        total = hp.iters_per_shot * max(self.task.shots(y.numpy()), 1)
        iters = min(total, hp.max_iters) if hp.max_iters else total
        params = [p for p in self.module.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay, betas=(0.9, 0.999))
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, iters, eta_min=hp.min_lr)
        scale = self.model.get_logit_scale().detach()
        for name, module in self.module.named_modules():  # only LoRA's dropout trains; the towers stay in eval
            module.train("lora_dropout" in name)

        def loss(idx: torch.Tensor) -> torch.Tensor:
            text = encode_prompt_sets(self.clip, self.tokenizer, self.task.prompts)
            scores = self.task.combine(scale * self._batch_features(images, idx).to(text) @ text.t())
            return self.task.loss(scores.float(), y[idx])

        optimise(self, optimizer, len(y), loss, Schedule(iters, hp.batch_size, scheduler=scheduler, history="step"))
        self.budget = {"iters": iters, "iters_full": total}

    def _scores(self, test) -> torch.Tensor:
        text = encode_prompt_sets(self.clip, self.tokenizer, self.task.prompts)
        if self.adapts_vision:
            images = self._images(test)
            feats = torch.cat([self.clip.encode_image(images[i:i + 64]) for i in range(0, len(images), 64)])
        else:
            feats = self.image_features(test)
        return self.task.combine(self.logit_scale() * feats.to(text) @ text.t())

    def save_module(self, folder: str) -> None:
        self.module.save_pretrained(folder)  # peft's format: the adapter only, not the base model
        for path in Path(folder).glob("adapter_model.*"):
            follow_umask(path)  # peft writes 0600 through safetensors

    def load_module(self, folder: str):
        return self._attach(folder)
