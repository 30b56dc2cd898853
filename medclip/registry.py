"""Model registry: architecture names → :class:`~medclip.config.ModelConfig`.

Architectures are data: one YAML file per model in ``medclip/model_configs/`` (shipped as package
data). ``register_model_config`` adds more at run time; a path to a YAML file works wherever a name does.
"""

from __future__ import annotations

import os
from importlib import resources

import yaml

from .config import ModelConfig, deep_merge, from_dict, load_yaml
from .errors import ConfigError

_EXTRA: dict[str, dict] = {}


def _builtin_names() -> list[str]:
    folder = resources.files("medclip") / "model_configs"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def list_models() -> list[str]:
    """Names of all registered architectures (built-in YAML configs plus registered ones).

    Returns:
        list[str]: the names, sorted.
    """
    return sorted(set(_builtin_names()) | set(_EXTRA))


def register_model_config(name: str, config: dict) -> None:
    """Register an architecture under ``name`` from a nested dict (validated now).

    Args:
        name: the architecture name :func:`create_model` and :func:`get_model_config` will accept.
        config: a nested dict in the layout of ``medclip/model_configs/*.yaml``.

    Raises:
        ConfigError: ``config`` is not a valid :class:`ModelConfig` (unknown or mistyped keys named).
    """
    from_dict(ModelConfig, config)
    _EXTRA[name] = config


def get_model_config_dict(name: str) -> dict:
    """The raw nested dict of a registered architecture or a YAML file path."""
    if name in _EXTRA:
        return dict(_EXTRA[name])
    if name.endswith((".yaml", ".yml")) and os.path.exists(name):
        return load_yaml(name)
    path = resources.files("medclip") / "model_configs" / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown model '{name}'; known models: {', '.join(list_models())}")
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def get_model_config(name: str, **overrides) -> ModelConfig:
    """Build the :class:`ModelConfig` of ``name`` with nested overrides.

    Args:
        name: a registered architecture (:func:`list_models`) or a YAML file path.
        **overrides: nested values merged over the architecture's (``vision={...}``, ``text={...}``, ...).

    Returns:
        ModelConfig: the validated config (its ``name`` is ``name`` unless the overrides set one).

    Raises:
        ConfigError: an unknown architecture, or overrides that are not valid config keys/values.

    Example:
        ``get_model_config("ViT-B-16", vision={"in_chans": 1}, text={"act": "quick_gelu"})``
    """
    data = deep_merge(get_model_config_dict(name), overrides)
    data.setdefault("name", name)
    return from_dict(ModelConfig, data)
