"""Reading foreign weight files safely: safetensors, or plain state dicts via ``torch.load(weights_only=True)``.

``torch.save``-d state dicts keep their key order (the layer order), which the ``in_order`` key map relies
on; safetensors files do not (they are stored sorted). Training checkpoints that wrap the weights
(``{"state_dict": ...}``, ``{"model": ...}``) and DDP's ``module.`` prefix are unwrapped.
"""

from __future__ import annotations

import os

import torch

from ..errors import CheckpointError, require_file
from ..paths import resolve_path

WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")


def read_state_dict(path: str | os.PathLike, what: str = "weights file") -> dict[str, torch.Tensor]:
    """Load a weights file (``pkg:`` paths allowed) into a ``{name: tensor}`` dict on CPU.

    Args:
        path: a ``.safetensors`` file, or a ``torch.save``-d plain state dict (``.pt``/``.pth``/``.bin``).
        what: a short description for error messages.

    Raises:
        MissingFileError: the file does not exist.
        CheckpointError: the file is corrupt, pickles arbitrary objects, or holds no tensors.
    """
    path = resolve_path(path)
    require_file(path, what)
    if os.path.isdir(path):
        raise CheckpointError(f"{what} {path} is a folder; point at the weights file inside it")
    if str(path).endswith(".safetensors"):
        state = _read_safetensors(path)
    else:
        state = _read_torch(path)
    state = _unwrap(state, path)
    if not state:
        raise CheckpointError(f"{path}: no tensors found in the {what}")
    return state


def _read_safetensors(path: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except Exception as exc:  # safetensors raises its own types for truncated/corrupt headers
        raise CheckpointError(f"{path}: cannot read safetensors weights ({exc}); the file is corrupt") from None


def _read_torch(path: str) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: cannot load as a plain state dict with weights_only=True ({first}); "
                              f"TorchScript archives and pickled models are not loaded — save a state_dict "
                              f"or safetensors file instead") from None


def _unwrap(state, path: str) -> dict[str, torch.Tensor]:
    """Strip training-checkpoint wrappers and the DDP ``module.`` prefix; keep only tensors."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict (name -> tensor), got {type(state).__name__}")
    for key in WRAPPER_KEYS:
        if isinstance(state.get(key), dict) and not any(isinstance(v, torch.Tensor) for v in state.values()):
            state = state[key]
            break
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if tensors and all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def format_keys(keys, limit: int = 3) -> str:
    """``a, b, c ... (+N more)`` for error messages."""
    keys = list(keys)
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def reject_unknown(unknown: list[str], source: str, what: str) -> None:
    """Raise one line naming the first keys a converter did not map (``what``: the format it expected).

    Raises:
        CheckpointError: ``unknown`` is not empty.
    """
    if unknown:
        raise CheckpointError(f"{source}: unexpected keys for {what}: {format_keys(unknown)}")
