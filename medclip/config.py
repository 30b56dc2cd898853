"""Config dataclasses and their strict YAML/dict loading.

Configs are plain dataclasses. :func:`from_dict` builds one from a (nested) dict and raises
:class:`~medclip.errors.ConfigError` naming any unknown key, so a typo in a recipe never passes
silently. :func:`apply_overrides` applies ``--set a.b=c`` style overrides (values parsed as YAML).

The model configs (:class:`VisionConfig`, :class:`TextConfig`, :class:`ModelConfig`) hold everything
needed to rebuild a model; they are written to ``config.json`` by ``save_pretrained``.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml

from .config_checks import (  # noqa: F401 - re-exported: converters and model.py import them from here
    MAX_IMAGE_SIDE,
    TEXT_RANGES,
    TIMM_RANGES,
    check_foreign_config,
    check_int,
    check_number,
    check_weights_match,
    estimate_parameters,
    validate_model_config,
)
from .errors import ConfigError, require_file

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
ACTIVATIONS = ("gelu", "quick_gelu")


@dataclass
class VisionConfig:
    """Image tower: a timm trunk plus a projection to the joint embedding.

    Attributes:
        timm_model: any timm model name (``vit_base_patch32_clip_224``, ``resnet50_clip``, ...).
        image_size: input side length in pixels.
        in_chans: 1 for grayscale X-rays (timm adapts the stem) or 3.
        act: ``gelu`` or ``quick_gelu`` (ViT trunks only; CNN trunks keep their own).
        timm_kwargs: extra keyword arguments for ``timm.create_model`` (depth, embed_dim, ...).
        proj: ``linear`` (no bias, as CLIP), ``mlp`` (Linear-GELU-Linear), ``none`` (the trunk's timm head
            projects, e.g. CLIP ResNets whose attention pool projects) or ``identity`` (the trunk's pooled
            features are the embedding, e.g. SigLIP's MAP-pooled ViT).
        mean: per-channel normalisation mean (defaults to CLIP's, averaged for 1 channel).
        std: per-channel normalisation std.
        trunk_weights: optional local weights file for the trunk (safetensors or a plain state dict).
        trunk_key_map: how ``trunk_weights`` keys map onto the trunk: ``none`` or a registered mapper.
        drop_path: stochastic depth rate of the trunk.
        hf_config: a Hugging Face vision encoder's config (with ``model_type``, e.g. MedCLIP-ViT's Swin): the
            trunk is that ``transformers`` model, pooled by its ``pooler_output`` (``timm_model`` unused).
    """

    timm_model: str = "vit_base_patch32_clip_224"
    image_size: int = 224
    in_chans: int = 3
    act: str = "gelu"
    timm_kwargs: dict = field(default_factory=dict)
    proj: str = "linear"
    mean: list | None = None
    std: list | None = None
    trunk_weights: str | None = None
    trunk_key_map: str = "none"
    drop_path: float = 0.0
    hf_config: dict | None = None

    def __post_init__(self):
        check_int("vision.image_size", self.image_size, 8, MAX_IMAGE_SIDE)
        if not isinstance(self.timm_kwargs, dict):
            raise ConfigError(f"vision.timm_kwargs must be a mapping, got {type(self.timm_kwargs).__name__}")
        for name, (low, high) in TIMM_RANGES.items():
            if name in self.timm_kwargs:
                check_int(f"vision.timm_kwargs.{name}", self.timm_kwargs[name], low, high)
        _check_choice("vision.act", self.act, ACTIVATIONS)
        _check_choice("vision.proj", self.proj, ("linear", "mlp", "none", "identity"))
        if self.in_chans not in (1, 3):
            raise ConfigError(f"vision.in_chans must be 1 or 3, got {self.in_chans}")
        if self.mean is None:
            self.mean = list(OPENAI_MEAN) if self.in_chans == 3 else [round(sum(OPENAI_MEAN) / 3, 8)]
        if self.std is None:
            self.std = list(OPENAI_STD) if self.in_chans == 3 else [round(sum(OPENAI_STD) / 3, 8)]
        self.mean, self.std = [float(v) for v in self.mean], [float(v) for v in self.std]
        for name in ("mean", "std"):
            if len(getattr(self, name)) != self.in_chans:
                raise ConfigError(f"vision.{name} needs {self.in_chans} values (one per channel), "
                                  f"got {getattr(self, name)}")


@dataclass
class TextConfig:
    """Text tower: CLIP's causal Transformer, or a Hugging Face encoder from a local folder.

    Attributes:
        context_length: maximum tokens (77 for CLIP).
        vocab_size: BPE vocabulary size (49408 for CLIP).
        width: residual width.
        heads: attention heads.
        layers: Transformer blocks.
        mlp_ratio: hidden size of the MLP relative to ``width``.
        act: ``gelu`` or ``quick_gelu``.
        hf_model_dir: a local transformers encoder folder; when set the CLIP-specific sizes are ignored.
        pooling: ``cls`` or ``mean`` pooling of an HF encoder's output, or ``pooler``: the encoder's own
            ``pooler_output`` (SigLIP: its head over the last position), or ``medclip``: MedCLIP's mean over all
            positions (padding included, up to the batch's longest text) of hidden layers 1, 2 and the last.
        proj_bias: whether the (linear) projection to the joint embedding has a bias.
        proj: projection of an HF encoder: ``linear``, or ``mlp`` (Linear-GELU-Linear without biases,
            hidden ``(width + embed_dim) // 2``, open_clip's ``hf_proj_type: mlp``, e.g. BiomedCLIP) or
            ``none`` (the encoder's output is the embedding, SigLIP).
        attention_mask: give an HF encoder the padding mask (and trim padding columns); ``false`` feeds the
            padded-to-max ids without a mask, as SigLIP was trained (its pooling reads the last position).
    """

    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    heads: int = 8
    layers: int = 12
    mlp_ratio: float = 4.0
    act: str = "gelu"
    hf_model_dir: str | None = None
    pooling: str = "cls"
    proj_bias: bool = False
    proj: str = "linear"
    attention_mask: bool = True

    def __post_init__(self):
        _check_choice("text.act", self.act, ACTIVATIONS)
        _check_choice("text.pooling", self.pooling, ("cls", "mean", "pooler", "medclip"))
        _check_choice("text.proj", self.proj, ("linear", "mlp", "none"))
        if self.proj != "linear" and self.hf_model_dir is None:
            raise ConfigError("text.proj: mlp is for Hugging Face text towers (text.hf_model_dir); CLIP's own "
                              "text tower projects linearly")
        for name, (low, high) in TEXT_RANGES.items():
            check_int(f"text.{name}", getattr(self, name), low, high)
        check_number("text.mlp_ratio", self.mlp_ratio, 0.01, 64)
        if self.hf_model_dir is None and self.width % self.heads:
            raise ConfigError(f"text.width ({self.width}) must be divisible by text.heads ({self.heads})")


@dataclass
class ModelConfig:
    """A whole CLIP model.

    Attributes:
        embed_dim: size of the joint image-text embedding.
        vision: the image tower.
        text: the text tower.
        init_logit_scale: initial value of the learnable log temperature, ln(1/0.07).
        max_logit_scale: the log scale is clamped to this (ln 100); converters raise it to at least a
            checkpoint's stored value.
        init_logit_bias: when set, the model has a learnable logit bias (SigLIP) starting here; None: none.
        name: the registry name this config came from (informational).
    """

    embed_dim: int = 512
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    init_logit_scale: float = math.log(1 / 0.07)
    max_logit_scale: float = math.log(100)
    init_logit_bias: float | None = None
    name: str = ""

    def __post_init__(self):
        if isinstance(self.vision, VisionConfig) and isinstance(self.text, TextConfig):
            validate_model_config(self)


def from_dict(cls, data: dict | None, where: str = ""):
    """Build dataclass ``cls`` from a nested dict, refusing unknown keys.

    Args:
        cls: a dataclass type whose fields may themselves be dataclasses.
        data: the values; missing keys keep their defaults.
        where: dotted prefix used in error messages (``"model.vision"``).

    Returns:
        An instance of ``cls``.

    Raises:
        ConfigError: on an unknown key or a value of the wrong kind.
    """
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"'{where or cls.__name__}' must be a mapping of keys to values, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        dotted = f"{where}.{key}" if where else key
        if key not in fields:
            raise ConfigError(f"unknown config key '{dotted}' (valid keys here: {', '.join(sorted(fields))})")
        sub = _dataclass_in(hints[key])
        kwargs[key] = from_dict(sub, value, dotted) if sub is not None and not dataclasses.is_dataclass(value) \
            else value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"invalid config '{where or cls.__name__}': {exc}") from None


def to_dict(config) -> dict:
    """Plain nested dict of a config dataclass (JSON/YAML serialisable)."""
    return dataclasses.asdict(config)


def load_yaml(path) -> dict:
    """Read a YAML mapping with ``yaml.safe_load``; one-line errors for missing or malformed files."""
    require_file(path, "config file")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def deep_merge(base: dict, update: dict) -> dict:
    """Return ``base`` updated recursively with ``update`` (neither is modified)."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "timm_kwargs":
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    """Apply ``a.b=c`` overrides to a nested dict; values are parsed as YAML (``1e-3``, ``true``, ``[1,2]``).

    Raises:
        ConfigError: when an override is not of the form ``key.path=value``.
    """
    data = dict(data)
    for item in overrides or []:
        if "=" not in item or not item.split("=", 1)[0].strip():
            raise ConfigError(f"override '{item}' must look like section.key=value (e.g. train.lr=3e-4)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:  # e.g. a YAML tag (!!python/object): safe_load refuses it
            raise ConfigError(f"override '{item}': the value is not plain YAML ({str(exc).splitlines()[0]}); "
                              "tags such as !!python/... are not allowed") from None
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.get(part)
            node[part] = dict(child) if isinstance(child, dict) else {}
            node = node[part]
        node[parts[-1]] = value
    return data


def _dataclass_in(hint) -> type | None:
    """The dataclass type inside a type hint (``X``, ``X | None``), else None."""
    if dataclasses.is_dataclass(hint):
        return hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            if dataclasses.is_dataclass(arg):
                return arg
    return None


def _check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(map(str, choices))}; got '{value}'")
