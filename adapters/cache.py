"""The image-feature cache: frozen image-tower features computed once per (image tower, image, transform).

The namespace of a model's features is the image tower's hash (:func:`medclip.eval.prompts.tower_hash`
of ``visual``) plus the transform config, so methods that adapt only the text side (CoOp, text LoRA,
CLIP-Adapter, Tip-Adapter, the probe) all reuse the same cached features. On disk the features are
safetensors shards (no pickles) with a SHA-256 checksum each; a shard that fails it is skipped and its
images re-encoded. Caches are trusted local files: the checksum detects corruption, not tampering.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from medclip.data.cachefile import load_checked, save_checked
from medclip.errors import DataError
from medclip.eval.prompts import tower_hash


@contextlib.contextmanager
def frozen(model):
    """Eval mode and ``requires_grad=False`` on every parameter of ``model``; restored afterwards."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def default_transform(vision_config) -> tuple[Callable, dict]:
    """The data layer's evaluation transform for ``vision_config`` and the config that keys the cache."""
    from medclip.data import build_image_transform

    fn = build_image_transform(vision_config, train=False)
    key = {"vision": {k: getattr(vision_config, k) for k in ("image_size", "in_chans", "mean", "std")},
           "transform": getattr(fn, "config", None) or repr(fn)}
    return fn, key


class FeatureCache:
    """Frozen image-tower features, computed once per (model hash, image path, transform config).

    In memory always; on disk as safetensors shards under ``cache_dir/<model>-<transform>/`` when
    ``cache_dir`` is given (tensor names are sha1 hashes of the image paths; no pickles).

    Args:
        cache_dir: folder for the safetensors shards, or None for a memory-only cache.
        batch_size: images per image-tower forward pass.
        transform: ``vision_config -> (callable(path) -> tensor, key dict)``; defaults to the data layer's.
        progress: show a tqdm bar while encoding.
    """

    def __init__(self, cache_dir: str | None = None, batch_size: int = 64, transform: Callable | None = None,
                 progress: bool = False):
        self.cache_dir = cache_dir
        self.batch_size = batch_size
        self.transform = transform or default_transform
        self.progress = progress
        self.encoded = 0  # images that went through the image tower (tests check "computed once")
        self._store: dict[str, dict[str, torch.Tensor]] = {}
        self._transforms: dict[int, tuple[Callable, dict]] = {}

    def _transform_for(self, model) -> tuple[Callable, dict]:
        if id(model) not in self._transforms:
            self._transforms[id(model)] = self.transform(model.config.vision)
        return self._transforms[id(model)]

    def key(self, model) -> str:
        """``<model hash>-<transform hash>``: the folder/namespace of this model's features."""
        _, tkey = self._transform_for(model)
        thash = hashlib.sha1(json.dumps(tkey, sort_keys=True, default=str).encode()).hexdigest()
        return f"{tower_hash(model, 'visual')[:16]}-{thash[:12]}"

    def _space(self, key: str) -> dict[str, torch.Tensor]:
        if key not in self._store:
            self._store[key] = {}
            folder = os.path.join(self.cache_dir, key) if self.cache_dir else None
            if folder and os.path.isdir(folder):
                for name in sorted(os.listdir(folder)):
                    if name.endswith(".safetensors"):  # a corrupt shard is skipped: its images are re-encoded
                        self._store[key].update(load_checked(os.path.join(folder, name), "feature-cache shard") or {})
        return self._store[key]

    def put(self, model, paths: Sequence[str], features: torch.Tensor) -> None:
        """Store precomputed features (normalised here) for ``paths``; used for synthetic tasks and shards."""
        key = self.key(model)
        space = self._space(key)
        new = {_path_key(p): f.detach().float().cpu().contiguous() for p, f in
               zip(paths, F.normalize(features.float(), dim=-1))}
        space.update(new)
        if self.cache_dir and new:
            folder = os.path.join(self.cache_dir, key)
            shard = os.path.join(folder, f"features-{hashlib.sha1(''.join(sorted(new)).encode()).hexdigest()[:16]}")
            save_checked(new, f"{shard}.safetensors", metadata={"format": "pt"})  # atomic, with its checksum

    def features(self, model, paths: Sequence[str]) -> torch.Tensor:
        """Normalised image features ``(N, D)`` for ``paths``, encoding only those not cached yet.

        Raises:
            DataError: when an image cannot be read (use :meth:`prefetch` to quarantine such rows first).
        """
        paths = [str(p) for p in paths]
        bad = self.prefetch(model, paths)
        if bad:
            raise DataError(f"{len(bad)} image(s) could not be read; first: {bad[0][0]}: {bad[0][1]}")
        space = self._space(self.key(model))
        return torch.stack([space[_path_key(p)] for p in paths]) if paths else torch.empty(0)

    def prefetch(self, model, paths: Sequence[str]) -> list[tuple[str, str]]:
        """Encode and store the features of ``paths`` not cached yet; returns ``(path, reason)`` of unreadable ones."""
        from medclip.eval.inputs import encode_images

        space = self._space(self.key(model))
        missing = list(dict.fromkeys(str(p) for p in paths if _path_key(str(p)) not in space))
        if not missing:
            return []
        fn, _ = self._transform_for(model)
        with frozen(model):
            try:
                feats, kept, bad = encode_images(model, missing, fn, self.batch_size, progress=self.progress)
            except DataError:  # not a single image readable
                return [(p, "unreadable image") for p in missing]
        self.encoded += len(kept)
        self.put(model, [missing[i] for i in kept], feats)
        return [(missing[i], reason) for i, reason in bad]


def _path_key(path: str) -> str:
    return hashlib.sha1(str(path).encode()).hexdigest()
