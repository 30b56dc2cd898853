"""Continued pretraining: start from a pretrained CLIP (``train.init_from``) and unlock parts of it.

* ``train.init_from: PATH`` — any folder or file ``medclip convert`` accepts (a medclip folder, an
  open_clip hub folder, an HF CLIPModel folder, a bare state dict with ``init_from_options.model_name``).
  The architecture comes from it (the recipe then has no ``model`` section); a bias the loss needs
  (SigLIP) is added at its default when the source has none.
* Partial unlocking, open_clip style. A tower's parameter *groups*, in order:

  - image: timm's own groups of the trunk (``group_matcher``: stem, each block, final norm), then the
    projection head;
  - text (CLIP transformer): token + positional embeddings, each block, then final norm + projection;
  - text (Hugging Face encoder): everything outside the layer stack (embeddings), each layer, then the
    projection.

  ``lock_image_unlocked_groups: N`` (with ``lock_image``) leaves the last ``N`` image groups trainable;
  ``lock_text_unlocked_layers: N`` (with ``lock_text``) the last ``N`` text groups. Locked modules stay in
  eval mode (norm statistics frozen).
"""

from __future__ import annotations

from torch import nn

from ..errors import CheckpointError

_LOADED: dict = {}  # (path, options) -> the loaded model, kept from recipe validation to build_model


def _key(cfg) -> tuple:
    return cfg.init_from, tuple(sorted((cfg.init_from_options or {}).items()))


def init_model_config(cfg):
    """The :class:`~medclip.config.ModelConfig` of ``cfg.init_from`` (the model is loaded once and kept)."""
    from ..interop.formats import load_model

    options = dict(cfg.init_from_options or {})
    loaded = load_model(cfg.init_from, options.get("from"), options.get("model_name", ""),
                        options.get("text_model"))
    _LOADED[_key(cfg)] = loaded.model
    return loaded.model.config


def load_init_weights(model: nn.Module, cfg) -> None:
    """Copy the ``init_from`` weights into ``model`` (built from the same config).

    Raises:
        CheckpointError: keys other than a loss-added ``logit_bias`` are missing or unexpected.
    """
    source = _LOADED.pop(_key(cfg), None)
    if source is None:
        init_model_config(cfg)
        source = _LOADED.pop(_key(cfg))
    result = model.load_state_dict(source.state_dict(), strict=False)
    missing = [k for k in result.missing_keys if k != "logit_bias"]
    if missing or result.unexpected_keys:
        raise CheckpointError(f"train.init_from {cfg.init_from}: weights do not fit the model (missing "
                              f"{missing[:3]}, unexpected {result.unexpected_keys[:3]})")


def image_groups(visual: nn.Module) -> list[list[nn.Parameter]]:
    """The image tower's parameter groups, first to last (see the module docstring)."""
    trunk = visual.trunk
    if hasattr(trunk, "group_matcher"):
        from timm.models import group_parameters

        named = group_parameters(trunk, trunk.group_matcher(coarse=False))
        groups = [[trunk.get_parameter(n) for n in named[i]] for i in sorted(named)]
    else:
        groups = [list(trunk.parameters())]
    head = list(visual.head.parameters())
    return [g for g in groups + [head] if g]


def text_groups(text: nn.Module) -> list[list[nn.Parameter]]:
    """The text tower's parameter groups, first to last (see the module docstring)."""
    if hasattr(text, "blocks"):  # medclip's CLIP text transformer
        first = [text.token_embedding.weight, text.positional_embedding]
        last = list(text.ln_final.parameters()) + list(text.text_projection.parameters())
        return [first, *[list(b.parameters()) for b in text.blocks], last]
    layers = _layer_stack(text.model)
    in_layers = {id(p) for p in layers.parameters()}
    first = [p for p in text.model.parameters() if id(p) not in in_layers]
    return [first, *[list(layer.parameters()) for layer in layers], list(text.text_projection.parameters())]


def _layer_stack(encoder: nn.Module) -> nn.ModuleList:
    """The encoder's layer list: its longest ``ModuleList``."""
    stacks = [m for m in encoder.modules() if isinstance(m, nn.ModuleList)]
    if not stacks:
        raise CheckpointError(f"{type(encoder).__name__}: no layer list found for lock_text_unlocked_layers")
    return max(stacks, key=len)


def lock_tower(tower: nn.Module, groups: list[list[nn.Parameter]], unlocked: int) -> None:
    """Freeze ``tower`` except its last ``unlocked`` groups (0: all frozen)."""
    tower.requires_grad_(False)
    for group in groups[len(groups) - unlocked:] if unlocked else []:
        for param in group:
            param.requires_grad_(True)


def freeze_locked_modules(tower: nn.Module) -> None:
    """Eval mode for every module whose own parameters are all frozen (norm statistics stay fixed)."""
    for module in tower.modules():
        own = list(module.parameters(recurse=False))
        if own and not any(p.requires_grad for p in own):
            module.eval()
