"""Pieces shared by the OpenAI/open_clip and Hugging Face CLIP converters.

Both converters build a plain nested config dict (the same shape as a ``model_configs/*.yaml`` file),
map the foreign tensors onto our names, then call :func:`build_and_load`, which refuses any missing,
unexpected or mis-shaped tensor with the first few names listed.
"""

from __future__ import annotations

import math

import torch

from ..config import ModelConfig, from_dict
from ..errors import ConfigError
from ..model import CLIP, check_state_dict

# (width, depth, heads) of timm's standard CLIP ViTs; other sizes use timm_kwargs on the base model.
_TIMM_VIT_SIZES = {(768, 12, 12): "base", (1024, 24, 16): "large", (1280, 32, 16): "huge"}


def vit_vision_config(width: int, layers: int, heads: int, patch_size: int, image_size: int,
                      mlp_ratio: float, act: str, in_chans: int = 3) -> dict:
    """Config dict of a timm ``vit_*_clip_*`` trunk with these sizes (standard name when one exists)."""
    size = _TIMM_VIT_SIZES.get((width, layers, heads))
    name = f"vit_{size}_patch{patch_size}_clip_{image_size}" if size else ""
    import timm

    if size and timm.is_model(name) and mlp_ratio == 4.0:
        kwargs = {}
    else:
        name = "vit_base_patch16_clip_224"
        kwargs = {"patch_size": patch_size, "embed_dim": width, "depth": layers, "num_heads": heads,
                  "mlp_ratio": mlp_ratio}
    return {"timm_model": name, "image_size": image_size, "in_chans": in_chans, "act": act,
            "timm_kwargs": kwargs, "proj": "linear"}


def check_act(act: str, where: str) -> str:
    """Map a foreign activation name to ours (``gelu`` / ``quick_gelu``) or raise."""
    names = {"gelu": "gelu", "quick_gelu": "quick_gelu", "quickgelu": "quick_gelu"}
    if act not in names:
        raise ConfigError(f"{where}: activation '{act}' is not supported (only gelu and quick_gelu)")
    return names[act]


def split_qkv(fused: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split a fused ``in_proj`` weight ``(3W, W)`` or bias ``(3W,)`` into q, k, v."""
    return tuple(t.contiguous() for t in fused.chunk(3, dim=0))


def count_layers(state: dict, prefix: str) -> int:
    """Number of blocks ``prefix<i>.`` present in ``state``."""
    indices = {int(k[len(prefix):].split(".")[0]) for k in state if k.startswith(prefix)}
    return max(indices) + 1 if indices else 0


def build_and_load(config: dict, state: dict, source: str) -> CLIP:
    """Build our CLIP from a config dict and load ``state`` strictly (clear errors), in eval mode.

    The logit-scale clamp is raised to at least the stored log scale (a checkpoint is never clipped) unless
    the converter sets ``max_logit_scale`` itself (the source model's own clamp, e.g. MedCLIP's 4.6052, which
    upstream applies at use), and a stored ``logit_bias`` (SigLIP) gives the model its bias parameter.
    """
    config = dict(config)
    if torch.is_tensor(state.get("logit_scale")) and state["logit_scale"].numel() == 1 \
            and "max_logit_scale" not in config:
        stored = float(state["logit_scale"])
        config["max_logit_scale"] = max(float(config.get("max_logit_scale", math.log(100))), stored)
    if torch.is_tensor(state.get("logit_bias")) and state["logit_bias"].numel() == 1:
        state = {**state, "logit_bias": state["logit_bias"].reshape(())}
        config["init_logit_bias"] = float(state["logit_bias"])
    if torch.is_tensor(state.get("logit_scale")):
        state = {**state, "logit_scale": state["logit_scale"].reshape(())}
    model = CLIP(from_dict(ModelConfig, config, "model"))
    own = model.state_dict()
    state = {k: v.to(own[k].dtype) if k in own else v for k, v in state.items()}
    check_state_dict(model, state, source)
    model.load_state_dict(state, strict=True)
    return model.eval()


# what a saved HF text encoder may hold that the wrapped one neither loads nor reads: the id buffers (saved by
# older transformers) and BERT's next-sentence ``pooler`` (CLS/mean/MedCLIP pooling never calls it)
HF_TEXT_SKIPPED = ("embeddings.position_ids", "embeddings.token_type_ids")


def hf_text_entry(rest: str, value: torch.Tensor) -> dict:
    """``{"text.model.<rest>": value}`` for the HF text encoder's own key ``rest``; ``{}`` for one it drops."""
    if rest in HF_TEXT_SKIPPED or rest.startswith("pooler."):
        return {}
    return {"text.model." + rest: value}


def require_text_model(text_model: str | None, source: str, model: str, hub_id: str) -> str:
    """The local HF text-encoder folder a checkpoint names only by hub id, or a one-line error saying so."""
    import os

    from ..errors import MissingFileError

    if not text_model or not os.path.isfile(os.path.join(text_model, "config.json")):
        raise MissingFileError(f"{source}: {model} names its text encoder by hub id; pass --text-model DIR, a local "
                               f"copy of {hub_id} (config.json and vocab.txt)")
    return text_model
