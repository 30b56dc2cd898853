"""Checksummed cache files: safetensors with a SHA-256 of their tensors stored in the header.

Caches (prompt embeddings, image-feature shards) are trusted local files: they hold no pickles, and the
checksum detects corruption (a torn write, a bit flip, a hand-edited tensor), not an attacker who can
also rewrite the checksum. A file whose checksum is missing or wrong is reported with a warning and
recomputed by the caller, never used.
"""

from __future__ import annotations

import hashlib
import logging
import os

import torch

logger = logging.getLogger("medclip.cache")
CHECKSUM_KEY = "medclip_sha256"


def tensor_checksum(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes (in name order)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def save_checked(tensors: dict[str, torch.Tensor], path: str, metadata: dict | None = None) -> None:
    """Write ``tensors`` to ``path`` (safetensors, atomic rename) with their checksum in the metadata."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {**(metadata or {}), CHECKSUM_KEY: tensor_checksum(tensors)}
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    save_file(tensors, tmp, metadata=meta)
    os.replace(tmp, path)


def load_checked(path: str, what: str = "cache file") -> dict[str, torch.Tensor] | None:
    """The tensors of ``path``, or None (with a warning) when it is unreadable or fails its checksum."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            stored = (f.metadata() or {}).get(CHECKSUM_KEY)
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except Exception as exc:  # torn, truncated or garbage file
        logger.warning("%s %s is unreadable (%s); recomputing it", what, path, type(exc).__name__)
        return None
    if stored != tensor_checksum(tensors):
        reason = "has no checksum" if stored is None else "fails its checksum (corrupt or edited)"
        logger.warning("%s %s %s; recomputing it", what, path, reason)
        return None
    return tensors
