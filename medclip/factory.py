"""``create_model``: name (or config) → :class:`~medclip.model.CLIP`, plus ``from_pretrained``."""

from __future__ import annotations

import contextlib

import torch

from .config import ModelConfig
from .model import CLIP
from .registry import get_model_config


def create_model(name_or_config: str | ModelConfig = "ViT-B-32", device: str | torch.device | None = None,
                 **overrides) -> CLIP:
    """Build a randomly initialised CLIP model.

    Args:
        name_or_config: a registered architecture (see :func:`list_models`), a YAML path, or a ModelConfig.
        device: where to create the parameters (``"meta"`` builds without memory, for counting).
        **overrides: nested config overrides, e.g. ``vision={"in_chans": 1}``, ``embed_dim=256``.

    Returns:
        The model, in train mode. Trunk weights named in ``vision.trunk_weights`` are loaded.
    """
    if isinstance(name_or_config, ModelConfig):
        if overrides:
            from .config import deep_merge, from_dict, to_dict

            name_or_config = from_dict(ModelConfig, deep_merge(to_dict(name_or_config), overrides))
        config = name_or_config
    else:
        config = get_model_config(name_or_config, **overrides)
    with torch.device(device) if device is not None else contextlib.nullcontext():
        model = CLIP(config)
    if config.vision.trunk_weights and str(device) != "meta":
        from .interop.timm_weights import load_trunk_weights

        load_trunk_weights(model.visual.trunk, config.vision.trunk_weights, config.vision.trunk_key_map)
    return model


def from_pretrained(folder: str, map_location: str | torch.device = "cpu") -> CLIP:
    """Load a model folder written by :meth:`CLIP.save_pretrained` (``config.json`` + ``model.safetensors``).

    Args:
        folder: the model folder.
        map_location: device the weights are loaded onto.

    Returns:
        CLIP: the model, with the folder's config and weights.

    Raises:
        MissingFileError: ``config.json`` or ``model.safetensors`` is missing.
        CheckpointError: a corrupt file or weights that do not match the config.
    """
    return CLIP.from_pretrained(folder, map_location=map_location)



def create_model_and_transforms(name_or_path: str | ModelConfig = "ViT-B-32", device: str | torch.device | None = None,
                                resize: str = "pad", **overrides):
    """Model, training transform and evaluation transform in one call (as open_clip's function of that name).

    Args:
        name_or_path: a registered architecture / YAML / ModelConfig (random init), or a model folder or
            file in any format ``medclip convert`` reads (loaded exactly, eval mode).
        device: where to put the model.
        resize: ``pad`` (aspect-preserving, CheXzero) or ``crop`` (short side + center crop).
        **overrides: config overrides for a registered architecture (see :func:`create_model`).

    Returns:
        ``(model, train_transform, eval_transform)``; the transforms take a file path, a PIL image, a NumPy
        array or a tensor and return the normalised ``(C, H, W)`` tensor the model expects.
    """
    import os

    from .data.transforms import build_image_transform

    if isinstance(name_or_path, str) and os.path.exists(name_or_path):
        from .interop.formats import load_model

        model = load_model(name_or_path).model
        model = model.to(device) if device is not None else model
    else:
        model = create_model(name_or_path, device=device, **overrides)
    train = build_image_transform(model.config.vision, train=True, resize=resize)
    evaluate = build_image_transform(model.config.vision, train=False, resize=resize)
    return model, train, evaluate
