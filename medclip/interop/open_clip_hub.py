"""open_clip hub folders (``open_clip_config.json`` + weights) → our :class:`~medclip.model.CLIP`.

A hub folder (what ``open_clip.push_to_hf_hub`` / ``save_for_hf`` writes, e.g. BiomedCLIP's) holds
``open_clip_config.json`` (``model_cfg``: the architecture incl. ``quick_gelu``; ``preprocess_cfg``: mean,
std, interpolation, resize mode), the weights (``open_clip_model.safetensors``, or
``open_clip_pytorch_model.bin`` read with ``torch.load(weights_only=True)``) and, for HF text towers, the
tokenizer files. Two layouts are supported:

* the standard open_clip ``CLIP`` (OpenAI-layout towers): the config's ``quick_gelu`` settles the
  activation, the tensors the sizes (:mod:`medclip.interop.open_clip`);
* ``CustomTextCLIP`` with a timm image trunk + linear projection and a Hugging Face text encoder
  (BiomedCLIP: ``vit_base_patch16_224`` + PubMedBERT, ``hf_proj_type: mlp``, CLS pooling, 256 tokens).
  The timm trunk keeps timm's own keys (our trunk *is* that timm model); the BERT config comes from the
  folder named by ``text_cfg.hf_model_name`` when it is a local folder, else from ``text_model``
  (``--text-model DIR``): published configs name it by hub id, and nothing is downloaded.
"""

from __future__ import annotations

import json
import os

from ..errors import ConfigError, MissingFileError, require_file
from .checkpoints import read_state_dict, reject_unknown
from .clip_common import build_and_load, hf_text_entry
from .open_clip import config_from_open_clip, convert_open_clip_state

HUB_CONFIG = "open_clip_config.json"
HUB_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
_POOLERS = {"cls_last_hidden_state_pooler": "cls", "mean_pooler": "mean"}
# HF encoder buffers that may be saved with the weights but are not parameters


def read_hub_config(folder: str) -> dict:
    """``open_clip_config.json`` of ``folder``, checked to have a ``model_cfg`` mapping."""
    path = os.path.join(folder, HUB_CONFIG)
    require_file(path, "open_clip hub config")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc}); re-download or re-save the folder") from None
    if not isinstance(data, dict) or not isinstance(data.get("model_cfg"), dict):
        raise ConfigError(f"{path}: no 'model_cfg' mapping (not an open_clip hub config)")
    from ..config import check_foreign_config

    check_foreign_config(data["model_cfg"], path)
    return data


def hub_weights(folder: str) -> str:
    """The weights file of a hub folder (safetensors preferred)."""
    for name in HUB_WEIGHTS:
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    raise MissingFileError(f"{folder}: no open_clip weights ({' or '.join(HUB_WEIGHTS)}); copy the weights file "
                           f"next to {HUB_CONFIG}")


def from_open_clip_hub(folder: str, text_model: str | None = None) -> tuple:
    """Load an open_clip hub folder.

    Args:
        folder: the folder holding ``open_clip_config.json`` and the weights.
        text_model: a local Hugging Face encoder folder (config + vocabulary) for custom-text models whose
            config names the encoder by hub id (BiomedCLIP).

    Returns:
        ``(model, info)``: our CLIP in eval mode and a dict with ``preprocess`` (the source's
        ``preprocess_cfg``), ``weights`` (the file read) and ``text_dir`` (the HF encoder folder or None).

    Raises:
        MissingFileError / ConfigError / CheckpointError: one line naming the file and the fix.
    """
    hub = read_hub_config(folder)
    cfg, preprocess = hub["model_cfg"], dict(hub.get("preprocess_cfg") or {})
    weights = hub_weights(folder)
    state = read_state_dict(weights, "open_clip weights")
    source = f"{weights} (open_clip hub)"
    text_cfg, vision_cfg = cfg.get("text_cfg") or {}, cfg.get("vision_cfg") or {}
    if text_cfg.get("hf_model_name") or vision_cfg.get("timm_model_name"):
        config, state, text_dir = _custom_text(cfg, state, folder, text_model, source)
    else:
        quick_gelu = bool(cfg.get("quick_gelu", False))
        name = os.path.basename(os.path.normpath(folder)) + ("-quickgelu" if quick_gelu else "")
        config = config_from_open_clip(state, name, quick_gelu, cfg, source=source)
        state, text_dir = convert_open_clip_state(state), None
    _apply_preprocess(config["vision"], preprocess, folder)
    model = build_and_load(config, state, source)
    return model, {"preprocess": preprocess, "weights": weights, "text_dir": text_dir}


def _apply_preprocess(vision: dict, preprocess: dict, folder: str) -> None:
    for key in ("mean", "std"):
        if key in preprocess:
            values = preprocess[key]
            if not (isinstance(values, list) and len(values) == 3):
                raise ConfigError(f"{os.path.join(folder, HUB_CONFIG)}: preprocess_cfg.{key} must be 3 numbers, "
                                  f"got {values!r}")
            vision[key] = [float(v) for v in values]


def _custom_text(cfg: dict, state: dict, folder: str, text_model: str | None, source: str) -> tuple:
    """Config and renamed tensors of a timm-trunk + HF-text ``CustomTextCLIP`` (BiomedCLIP)."""
    hub_path = os.path.join(folder, HUB_CONFIG)
    vision_cfg, text_cfg = cfg.get("vision_cfg") or {}, cfg.get("text_cfg") or {}
    if not (vision_cfg.get("timm_model_name") and text_cfg.get("hf_model_name")):
        raise ConfigError(f"{hub_path}: only timm image trunk + Hugging Face text models are supported among "
                          f"custom open_clip models (vision_cfg.timm_model_name and text_cfg.hf_model_name)")
    unsupported = {"vision_cfg.timm_pool": vision_cfg.get("timm_pool", "avg") not in ("",),
                   "vision_cfg.timm_proj": vision_cfg.get("timm_proj", "linear") != "linear",
                   "vision_cfg.timm_proj_bias": bool(vision_cfg.get("timm_proj_bias", False)),
                   "text_cfg.hf_pooler_type": text_cfg.get("hf_pooler_type", "mean_pooler") not in _POOLERS,
                   "text_cfg.hf_proj_type": text_cfg.get("hf_proj_type", "mlp") not in ("linear", "mlp")}
    bad = [k for k, v in unsupported.items() if v]
    if bad:
        raise ConfigError(f"{hub_path}: {', '.join(bad)} not supported (medclip reproduces timm_pool '', "
                          f"timm_proj linear without bias, CLS/mean pooling, linear/mlp text projection)")
    text_dir = _text_folder(text_cfg, text_model, hub_path)
    embed_dim = int(cfg.get("embed_dim", 512))
    vision = {"timm_model": vision_cfg["timm_model_name"], "image_size": int(vision_cfg.get("image_size", 224)),
              "in_chans": 3, "proj": "linear"}
    text = {"hf_model_dir": text_dir, "pooling": _POOLERS[text_cfg.get("hf_pooler_type", "mean_pooler")],
            "proj": text_cfg.get("hf_proj_type", "mlp"), "context_length": int(text_cfg.get("context_length", 77))}
    name = os.path.basename(os.path.normpath(folder))
    config = {"embed_dim": embed_dim, "vision": vision, "text": text, "name": name}
    return config, _custom_text_state(state, source), text_dir


def _text_folder(text_cfg: dict, text_model: str | None, hub_path: str) -> str:
    """The local HF encoder folder: ``--text-model`` first, else ``hf_model_name`` when it is a local folder."""
    candidates = [text_model] if text_model else [text_cfg["hf_model_name"]]
    folder = candidates[0]
    if not os.path.isfile(os.path.join(str(folder), "config.json")):
        raise MissingFileError(
            f"{hub_path}: the text encoder '{folder}' is not a local folder with a config.json; pass --text-model "
            f"DIR, a local copy of {text_cfg['hf_model_name']} (its config.json and vocabulary; nothing is "
            f"downloaded)")
    return str(folder)


def _custom_text_state(state: dict, source: str) -> dict:
    """open_clip ``CustomTextCLIP`` keys → ours (the timm trunk and the HF encoder keep their own names)."""
    out, unknown = {}, []
    for key, value in state.items():
        if key.startswith("visual.trunk."):
            out[key] = value
        elif key == "visual.head.proj.weight":
            out["visual.head.weight"] = value
        elif key.startswith("text.transformer."):
            out.update(hf_text_entry(key[len("text.transformer."):], value))
        elif key.startswith("text.proj."):
            out["text.text_projection." + key[len("text.proj."):]] = value
        elif key in ("logit_scale", "logit_bias"):
            out[key] = value
        else:
            unknown.append(key)
    reject_unknown(unknown, source, "a timm + HF text model")
    return out
