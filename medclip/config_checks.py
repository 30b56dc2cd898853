"""Validation of model configs that may be hostile: size ranges, a parameter estimate, the weights header.

A ``config.json`` is user input: ``layers: 1e9`` would allocate gigabytes before any error, ``heads: 0``
divides by zero. :class:`~medclip.config.TextConfig`, :class:`~medclip.config.VisionConfig` and
:class:`~medclip.config.ModelConfig` call these checks when built, so every path that builds a config
(``from_pretrained``, recipes, converters) is covered. Converters also call :func:`check_foreign_config`
on the foreign file before transformers or open_clip parse it.
"""

from __future__ import annotations

import math

from .errors import ConfigError, require_file

# Ranges that no real CLIP reaches (ViT-bigG: width 1664-2048, 48 layers): hostile configs stop here
MAX_IMAGE_SIDE = 4096
TEXT_RANGES = {"context_length": (1, 4096), "vocab_size": (1, 1_000_000), "width": (1, 16384),
               "heads": (1, 256), "layers": (1, 256)}
TIMM_RANGES = {"depth": (1, 256), "embed_dim": (1, 16384), "num_heads": (1, 256), "patch_size": (1, 1024)}
DEFAULT_MAX_PARAMS = 20_000_000_000


def check_int(name: str, value, low: int, high: int) -> None:
    """Refuse a config value that is not an integer in ``[low, high]`` (one line naming the key).

    Converters call it for every size they read from a foreign config (e.g. an HF ``config.json``).
    """
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            raise ConfigError(f"{name} must be an integer in [{low}, {high}], got {value!r} (write it without "
                              "a decimal point or exponent)")
        raise ConfigError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
    if not low <= value <= high:
        raise ConfigError(f"{name} must be in [{low}, {high}], got {value}")


def check_number(name: str, value, low: float, high: float) -> None:
    """Refuse a config value that is not a finite number in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high:
        raise ConfigError(f"{name} must be a number in [{low}, {high}], got {value!r}")


def estimate_parameters(config) -> int:
    """A parameter count estimate from the config alone (text tower exact to ~1 %, ViT trunks from
    ``timm_kwargs``), computed before anything is allocated."""
    t = config.text
    text = 0
    if t.hf_model_dir is None:
        block = int(4 * t.width * t.width + 2 * t.mlp_ratio * t.width * t.width)
        text = t.vocab_size * t.width + t.context_length * t.width + t.layers * block + t.width * config.embed_dim
    kw = config.vision.timm_kwargs
    vision = 0
    if "depth" in kw and "embed_dim" in kw:
        d = int(kw["embed_dim"])
        vision = int(kw["depth"]) * 12 * d * d + d * config.embed_dim
    return text + vision


def validate_model_config(config, max_params: int | None = None) -> None:
    """Ranges of every size and the estimated parameter count, checked before a model is built.

    Args:
        config: the model config (e.g. from a ``config.json`` that may be hostile).
        max_params: refuse estimates above this (default ``MEDCLIP_MAX_PARAMS`` or 20 billion).

    Raises:
        ConfigError: one line naming the key, or the estimate and the limit.
    """
    import os

    check_int("model.embed_dim", config.embed_dim, 1, 16384)
    limit = max_params or int(float(os.environ.get("MEDCLIP_MAX_PARAMS", DEFAULT_MAX_PARAMS)))
    estimate = estimate_parameters(config)
    if estimate > limit:
        raise ConfigError(f"model config describes about {estimate:,} parameters, over the limit of {limit:,} "
                          "(MEDCLIP_MAX_PARAMS); refused before building the model")


def check_weights_match(model_cls, config, weights_path: str) -> None:
    """Refuse a config whose tensor shapes differ from the weights file's header, before building the model.

    The model is built on PyTorch's ``meta`` device (no memory) and its parameter shapes are compared with
    the safetensors header (read without loading a tensor).

    Raises:
        CheckpointError: naming the first mismatching tensor and both shapes.
    """
    import torch
    from safetensors import safe_open

    from .errors import CheckpointError

    require_file(weights_path, "weights file")
    try:
        with safe_open(weights_path, framework="pt") as f:
            header = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own types for truncated/garbage headers
        raise CheckpointError(f"{weights_path}: cannot read the weights header ({str(exc)[:120]}); the file is "
                              "corrupt or not safetensors") from None
    if config.text.hf_model_dir is not None:
        return  # an HF text tower loads its own folder when built; load_weights names any mismatch after
    try:
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in model_cls(config).state_dict().items()}
    except (RuntimeError, NotImplementedError, TypeError):  # a trunk that cannot be built on meta: checked on load
        return
    wrong = [k for k in expected if k in header and header[k] != expected[k]]
    if wrong:
        shapes = "; ".join(f"{k} {list(header[k])} in the file vs {list(expected[k])} by the config" for k in wrong[:3])
        raise CheckpointError(f"{weights_path}: shape mismatch with its config.json in {len(wrong)} tensor(s): "
                              f"{shapes} (refused before building the model)")


# size keys of foreign configs (HF text_config/vision_config, open_clip model_cfg/text_cfg/vision_cfg)
FOREIGN_SIZES = {"num_hidden_layers": (1, 256), "num_attention_heads": (1, 256), "hidden_size": (1, 16384),
                 "intermediate_size": (1, 65536), "vocab_size": (1, 1_000_000), "max_position_embeddings": (1, 65536),
                 "image_size": (8, MAX_IMAGE_SIDE), "patch_size": (1, 1024), "projection_dim": (1, 16384),
                 "embed_dim": (1, 16384), "width": (1, 16384), "heads": (1, 256), "context_length": (1, 65536),
                 "num_channels": (1, 3)}


def check_foreign_config(data: dict, where: str) -> None:
    """Range-check the sizes of a config a converter reads (HF ``config.json``, open_clip ``model_cfg``)
    before any library parses it or allocates from it: integers in sane ranges (``layers`` may also be
    a list of per-stage depths, as open_clip's ResNets).

    Args:
        data: the parsed JSON mapping; nested mappings (``text_config``, ``vision_cfg``, ...) are checked too.
        where: the file, for the message.

    Raises:
        ConfigError: one line naming the file, the key and the allowed range.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a JSON mapping, got {type(data).__name__}")
    for key, value in data.items():
        if isinstance(value, dict):
            check_foreign_config(value, f"{where}:{key}")
        elif key in FOREIGN_SIZES and value is not None:
            check_int(f"{where}: {key}", value, *FOREIGN_SIZES[key])
        elif key == "layers" and value is not None:
            for depth in value if isinstance(value, list) else [value]:
                check_int(f"{where}: layers", depth, 1, 256)
