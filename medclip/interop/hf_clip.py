"""Hugging Face ``CLIPModel`` folders (``config.json`` + safetensors) → our :class:`~medclip.model.CLIP`.

HF's config is read with ``transformers.AutoConfig`` (so omitted fields take HF's defaults), the sizes and
activation (``hidden_act``, ``quick_gelu`` for OpenAI's models) become our config, and the tensors are
renamed: the vision encoder onto timm ``vit_*_clip_*`` keys (q/k/v fused into timm's ``qkv``), the text
encoder onto our tower (q/k/v stay separate, as in HF).
"""

from __future__ import annotations

import json
import os

import torch

from ..errors import CheckpointError, ConfigError, require_file
from ..model import CLIP
from ..paths import resolve_path
from .checkpoints import read_state_dict
from .clip_common import build_and_load, check_act, vit_vision_config

_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
_IGNORED = ("vision_model.embeddings.position_ids", "text_model.embeddings.position_ids")


def from_hf_clip(folder: str) -> CLIP:
    """Load a Hugging Face ``CLIPModel`` folder as our model.

    Args:
        folder: the folder written by ``CLIPModel.save_pretrained`` (``pkg:`` paths allowed).

    Returns:
        Our CLIP in eval mode; image and text embeddings equal ``transformers.CLIPModel``'s.

    Raises:
        MissingFileError: the folder, its ``config.json`` or its weights file is missing.
        ConfigError: the folder holds another architecture (e.g. SigLIP) or unsupported settings.
        CheckpointError: tensors missing or mis-shaped (first few keys named).
    """
    folder = resolve_path(folder)
    require_file(os.path.join(folder, "config.json"), "Hugging Face CLIP config")
    config = config_from_hf_clip(folder)
    state = convert_hf_clip_state(_read_weights(folder))
    return build_and_load(config, state, f"{folder} (HF CLIPModel)")


def config_from_hf_clip(folder: str) -> dict:
    """Our nested config dict for the HF ``CLIPModel`` in ``folder``."""
    from transformers import AutoConfig

    from ..config import check_foreign_config

    with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
        raw = json.load(f)
    check_foreign_config(raw, os.path.join(folder, "config.json"))  # before transformers parses or allocates
    model_type = raw.get("model_type")
    if model_type != "clip":
        raise ConfigError(f"{folder}: model_type '{model_type}' is not a CLIPModel (only 'clip' is supported)")
    hf = AutoConfig.from_pretrained(folder, local_files_only=True)
    v, t = hf.vision_config, hf.text_config
    for part in (v, t):
        if abs(part.layer_norm_eps - 1e-5) > 1e-12:
            raise ConfigError(f"{folder}: layer_norm_eps {part.layer_norm_eps} is not supported (CLIP uses 1e-5)")
    if t.eos_token_id not in (2, t.vocab_size - 1):
        raise ConfigError(f"{folder}: text eos_token_id {t.eos_token_id} is not the highest token id; medclip "
                          f"pools the text at the highest id (as OpenAI's tokenizer)")
    vision = vit_vision_config(v.hidden_size, v.num_hidden_layers, v.num_attention_heads, v.patch_size,
                               v.image_size, v.intermediate_size / v.hidden_size,
                               check_act(v.hidden_act, f"{folder} vision_config.hidden_act"), in_chans=v.num_channels)
    text = {"context_length": t.max_position_embeddings, "vocab_size": t.vocab_size, "width": t.hidden_size,
            "heads": t.num_attention_heads, "layers": t.num_hidden_layers,
            "mlp_ratio": t.intermediate_size / t.hidden_size,
            "act": check_act(t.hidden_act, f"{folder} text_config.hidden_act")}
    return {"embed_dim": hf.projection_dim, "vision": vision, "text": text,
            "init_logit_scale": float(hf.logit_scale_init_value), "name": os.path.basename(folder.rstrip("/"))}


def _read_weights(folder: str) -> dict:
    for name in _WEIGHT_FILES:
        path = os.path.join(folder, name)
        if not os.path.exists(path):
            continue
        if name.endswith(".index.json"):
            with open(path, encoding="utf-8") as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
            state = {}
            for shard in shards:
                state.update(read_state_dict(os.path.join(folder, shard), "weights shard"))
            return state
        return read_state_dict(path, "HF CLIP weights")
    raise CheckpointError(f"{folder}: no weights file found (looked for {', '.join(_WEIGHT_FILES)})")


_VISION_SWAPS = (("vision_model.encoder.layers.", "blocks."), (".layer_norm1.", ".norm1."),
                 (".layer_norm2.", ".norm2."), (".self_attn.out_proj.", ".attn.proj."),
                 ("vision_model.pre_layrnorm.", "norm_pre."), ("vision_model.post_layernorm.", "norm."),
                 ("vision_model.embeddings.patch_embedding.", "patch_embed.proj."))
_TEXT_SWAPS = (("text_model.encoder.layers.", "blocks."), (".layer_norm1.", ".ln_1."), (".layer_norm2.", ".ln_2."),
               (".self_attn.", ".attn."), (".mlp.fc1.", ".mlp.c_fc."), (".mlp.fc2.", ".mlp.c_proj."),
               ("text_model.final_layer_norm.", "ln_final."),
               ("text_model.embeddings.token_embedding.", "token_embedding."))


def convert_hf_clip_state(state: dict) -> dict:
    """Rename an HF ``CLIPModel`` state dict to our keys (unknown keys pass through, to be reported)."""
    out, qkv = {}, {}
    for key, value in state.items():
        if key in _IGNORED:
            continue
        if key == "vision_model.embeddings.class_embedding":
            out["visual.trunk.cls_token"] = value.reshape(1, 1, -1)
        elif key == "vision_model.embeddings.position_embedding.weight":
            out["visual.trunk.pos_embed"] = value.unsqueeze(0)
        elif key == "text_model.embeddings.position_embedding.weight":
            out["text.positional_embedding"] = value
        elif key == "visual_projection.weight":
            out["visual.head.weight"] = value
        elif key == "text_projection.weight":
            out["text.text_projection.weight"] = value
        elif key == "logit_scale":
            out[key] = value
        elif key.startswith("vision_model."):
            for old, new in _VISION_SWAPS:
                key = key.replace(old, new)
            for n in "qkv":
                if f".self_attn.{n}_proj." in key:  # gathered, then fused into timm's qkv below
                    qkv[key.replace(f".self_attn.{n}_proj.", ".attn.qkv.") + f"#{n}"] = value
                    break
            else:
                out[f"visual.trunk.{key}"] = value
        elif key.startswith("text_model."):
            for old, new in _TEXT_SWAPS:
                key = key.replace(old, new)
            out[f"text.{key}"] = value
        else:
            out[key] = value
    for key in {k.rsplit("#", 1)[0] for k in qkv}:
        parts = [qkv.get(f"{key}#{n}") for n in "qkv"]
        if any(p is None for p in parts):
            raise CheckpointError(f"HF CLIP vision layer {key}: q/k/v projections incomplete")
        out[f"visual.trunk.{key}"] = torch.cat(parts, dim=0)
    return out

