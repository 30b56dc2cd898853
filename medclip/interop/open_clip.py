"""OpenAI / open_clip checkpoints → our :class:`~medclip.model.CLIP`.

The architecture is read off the tensors (as OpenAI's ``build_model`` does): widths, depths, patch and
image size, context length and vocabulary. Two things are not in the tensors: the activation (pass an
open_clip model name ending in ``-quickgelu``, or ``quick_gelu=True``) and the head width, which is 64
in every OpenAI and almost every open_clip model (override with ``model_config``, open_clip style:
``{"vision_cfg": {"head_width": 80}, "text_cfg": {"heads": 16}}``).

Key mapping (learned from timm's ``_convert_openai_clip`` filters in ``vision_transformer`` and
``byobnet``): the ViT goes onto timm ``vit_*_clip_*`` keys, ModifiedResNet onto timm ``resnet*_clip``
keys, and the text tower's fused ``in_proj`` is split into our separate q/k/v projections.
"""

from __future__ import annotations

import math
import os
import re

from ..errors import CheckpointError, ConfigError
from ..model import CLIP
from .checkpoints import format_keys, read_state_dict
from .clip_common import build_and_load, count_layers, split_qkv, vit_vision_config

# stage depths of OpenAI's ResNets -> (timm model, base width)
_RESNETS = {(3, 4, 6, 3): ("resnet50_clip", 64), (3, 4, 23, 3): ("resnet101_clip", 64),
            (4, 6, 10, 6): ("resnet50x4_clip", 80), (6, 8, 18, 8): ("resnet50x16_clip", 96),
            (3, 15, 36, 10): ("resnet50x64_clip", 128)}
# leftovers of OpenAI's JIT-era state dicts, and non-persistent buffers of older open_clip versions
_IGNORED = ("input_resolution", "context_length", "vocab_size", "attn_mask", "visual.attn_mask")


def from_open_clip(checkpoint: str, model_name: str = "", quick_gelu: bool | None = None,
                   model_config: dict | None = None) -> CLIP:
    """Load an OpenAI / open_clip CLIP state dict (ViT or ModifiedResNet image tower) as our model.

    Args:
        checkpoint: a state dict file (``.safetensors``, or ``torch.save`` of a state dict / training
            checkpoint; ``pkg:`` paths allowed). TorchScript archives are refused.
        model_name: the open_clip model name (``ViT-B-32``, ``RN50-quickgelu``, ...); used for the
            activation and as our config's name. Required unless ``quick_gelu`` (or ``model_config``'s
            ``quick_gelu``) is given: the tensors cannot tell GELU from QuickGELU.
        quick_gelu: force the activation (default: ``"quickgelu" in model_name``).
        model_config: open_clip-style overrides for what the tensors do not say (head widths).

    Returns:
        Our CLIP in eval mode, whose embeddings equal open_clip's.

    Raises:
        MissingFileError / CheckpointError: missing or unreadable file, unknown architecture, or
            tensors that do not fit (the first few keys are named).
    """
    state = read_state_dict(checkpoint, "open_clip checkpoint")
    config = config_from_open_clip(state, model_name, quick_gelu, model_config, source=str(checkpoint))
    if not model_name and quick_gelu is None and "quick_gelu" not in (model_config or {}):
        raise CheckpointError(
            f"{checkpoint}: a bare OpenAI-layout state dict does not say its activation (GELU and QuickGELU "
            f"models save the same keys); name it: --model-name X-quickgelu for OpenAI-trained weights "
            f"(e.g. CheXzero: ViT-B-32-quickgelu) or --model-name X for open_clip GELU models (e.g. ViT-B-32)")
    return build_and_load(config, convert_open_clip_state(state), f"{checkpoint} (open_clip)")


def config_from_open_clip(state: dict, model_name: str = "", quick_gelu: bool | None = None,
                          model_config: dict | None = None, source: str = "checkpoint") -> dict:
    """Our nested config dict for an OpenAI / open_clip state dict (see :func:`from_open_clip`)."""
    model_config = model_config or {}
    if quick_gelu is None:
        quick_gelu = bool(model_config.get("quick_gelu", "quickgelu" in model_name.lower().replace("_", "")))
    act = "quick_gelu" if quick_gelu else "gelu"
    missing = [k for k in ("token_embedding.weight", "positional_embedding", "ln_final.weight") if k not in state]
    if missing or not any(k.startswith("visual.") for k in state):
        what = format_keys(missing) or "visual.*"
        raise CheckpointError(f"{source}: not an OpenAI/open_clip CLIP state dict (missing {what}); "
                              f"custom-text (HF) or CoCa towers are not supported")
    if "visual.class_embedding" in state:
        vision = _vit_config(state, act, model_config.get("vision_cfg", {}), source)
    elif "visual.attnpool.c_proj.weight" in state:
        vision = _resnet_config(state, model_config.get("vision_cfg", {}), source)
    else:
        raise CheckpointError(f"{source}: unknown image tower (neither a CLIP ViT nor a ModifiedResNet; "
                              f"first visual keys: {format_keys([k for k in state if k.startswith('visual.')])})")
    text_cfg = model_config.get("text_cfg", {})
    width = state["token_embedding.weight"].shape[1]
    text = {"context_length": state["positional_embedding"].shape[0],
            "vocab_size": state["token_embedding.weight"].shape[0], "width": width,
            "heads": text_cfg.get("heads", max(width // 64, 1)),
            "layers": count_layers(state, "transformer.resblocks."),
            "mlp_ratio": state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / width, "act": act,
            "proj_bias": "text_projection.bias" in state}
    if "text_projection.weight" in state:
        embed_dim = state["text_projection.weight"].shape[0]
    else:
        embed_dim = state["text_projection"].shape[1]
    name = os.path.basename(model_name) or "open_clip"
    return {"embed_dim": embed_dim, "vision": vision, "text": text, "name": name}


def _vit_config(state: dict, act: str, vision_cfg: dict, source: str) -> dict:
    width = state["visual.conv1.weight"].shape[0]
    if width % vision_cfg.get("head_width", 64):
        raise ConfigError(f"{source}: vision_cfg.head_width {vision_cfg['head_width']} does not divide the image tower "
                          f"width {width} of the weights: the config does not match the checkpoint")
    patch = state["visual.conv1.weight"].shape[-1]
    grid = math.isqrt(state["visual.positional_embedding"].shape[0] - 1)
    heads = width // vision_cfg.get("head_width", 64)
    mlp_ratio = state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / width
    layers = count_layers(state, "visual.transformer.resblocks.")
    return vit_vision_config(width, layers, heads, patch, grid * patch, mlp_ratio, act)


def _resnet_config(state: dict, vision_cfg: dict, source: str) -> dict:
    depths = tuple(count_layers(state, f"visual.layer{i}.") for i in range(1, 5))
    if depths not in _RESNETS:
        raise ConfigError(f"{source}: ModifiedResNet with stage depths {depths} has no timm counterpart "
                          f"(known: {', '.join(f'{v[0]} {k}' for k, v in _RESNETS.items())})")
    if vision_cfg.get("head_width", 64) != 64:
        raise ConfigError(f"{source}: timm's CLIP ResNets use 64-wide attention-pool heads; got head_width "
                          f"{vision_cfg['head_width']}")
    timm_name, base_width = _RESNETS[depths]
    width = state["visual.conv1.weight"].shape[0] * 2
    image_size = math.isqrt(state["visual.attnpool.positional_embedding"].shape[0] - 1) * 32
    kwargs = {"img_size": image_size}
    if width != base_width:
        kwargs["width_factor"] = width / 64
    return {"timm_model": timm_name, "image_size": image_size, "in_chans": 3, "timm_kwargs": kwargs,
            "proj": "none"}


def convert_open_clip_state(state: dict) -> dict:
    """Rename an OpenAI / open_clip state dict to our keys (unknown keys pass through, to be reported)."""
    out = {}
    visual = {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
    projection = visual.pop("proj", None)
    for key, value in visual_to_timm(visual, is_resnet="attnpool.c_proj.weight" in visual).items():
        out[f"visual.trunk.{key}"] = value
    if projection is not None:
        out["visual.head.weight"] = projection.t().contiguous()
    for key, value in state.items():
        if key.startswith("visual.") or key in _IGNORED:
            continue
        if key == "text_projection":
            out["text.text_projection.weight"] = value.t().contiguous()
        elif key == "logit_scale":
            out[key] = value
        else:
            out.update(_text_key(key, value))
    return out


def _text_key(key: str, value) -> dict:
    key = key.replace("transformer.resblocks.", "blocks.")
    if key.endswith(("attn.in_proj_weight", "attn.in_proj_bias")):
        base, kind = key.rsplit(".in_proj_", 1)
        return {f"text.{base}.{n}_proj.{kind}": t for n, t in zip("qkv", split_qkv(value))}
    return {f"text.{key}": value}


def visual_to_timm(visual: dict, is_resnet: bool) -> dict:
    """OpenAI image-tower keys (without ``visual.``) → timm ``vit_*_clip_*`` or ``resnet*_clip`` keys."""
    return _resnet_to_timm(visual) if is_resnet else _vit_to_timm(visual)


_VIT_SWAPS = (("conv1.", "patch_embed.proj."), ("transformer.resblocks.", "blocks."), ("ln_pre.", "norm_pre."),
              ("ln_post.", "norm."), (".ln_1.", ".norm1."), (".ln_2.", ".norm2."), ("attn.in_proj_", "attn.qkv."),
              ("attn.out_proj.", "attn.proj."), ("mlp.c_fc.", "mlp.fc1."), ("mlp.c_proj.", "mlp.fc2."))


def _vit_to_timm(visual: dict) -> dict:
    out = {}
    for key, value in visual.items():
        if key == "class_embedding":
            out["cls_token"] = value.reshape(1, 1, -1)
        elif key == "positional_embedding":
            out["pos_embed"] = value.unsqueeze(0)
        else:
            for old, new in _VIT_SWAPS:
                key = key.replace(old, new)
            out[key] = value
    return out


def _resnet_to_timm(visual: dict) -> dict:
    def stage(m):  # layerS.I.convN / bnN -> stages.S-1.I.convN_*.conv / .bn
        kind = {1: "conv1_1x1", 2: "conv2_kxk", 3: "conv3_1x1"}[int(m.group(4))]
        return f"stages.{int(m.group(1)) - 1}.{m.group(2)}.{kind}.{m.group(3)}"

    def down(m):  # layerS.I.downsample.0 (conv) / .1 (bn)
        return f"stages.{int(m.group(1)) - 1}.{m.group(2)}.shortcut.conv.{'conv' if m.group(3) == '0' else 'bn'}"

    attnpool = {"positional_embedding": "pos_embed", "q_proj": "q", "k_proj": "k", "v_proj": "v", "c_proj": "proj"}
    out = {}
    for key, value in visual.items():
        key = re.sub(r"^conv([0-9])", r"stem.conv\1.conv", key)
        key = re.sub(r"^bn([0-9])", r"stem.conv\1.bn", key)
        key = re.sub(r"^layer([0-9])\.([0-9]+)\.(conv|bn)([0-9])", stage, key)
        key = re.sub(r"^layer([0-9])\.([0-9]+)\.downsample\.([0-9])", down, key)
        if key.startswith("attnpool."):
            part, _, rest = key[len("attnpool."):].partition(".")
            key = "head." + attnpool.get(part, part) + (f".{rest}" if rest else "")
        out[key] = value
    return out
