"""The few-shot interface, its registry, the task description and the image-feature cache.

Every method implements :class:`FewShotMethod` (``fit(train, val)``, ``predict_proba(test)``,
``save(dir)``, ``load(dir)``) and registers itself by name with :func:`register_method`. Inputs are
manifest subsets (pandas frames with an ``image`` column and label columns); a :class:`FeatureCache`
turns image paths into frozen image-tower features exactly once per (model hash, image path,
transform config), so a training epoch never re-runs the image tower.

A :class:`FewShotTask` says how text targets map onto classes:

* ``single``-label: one text target (a prompt ensemble) per class; probabilities are a softmax over
  classes, trained with cross-entropy.
* ``multi``-label: two text targets per condition, positive then negative; the score of a condition is
  the softmax over its pair, i.e. ``sigmoid(logit_pos - logit_neg)``, trained with BCE (unknown labels,
  NaN, are left out of the loss).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import weakref
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from medclip.errors import ConfigError, DataError, MissingFileError

TASK_KINDS = ("single", "multi")
METHOD_FILE = "method.json"
WEIGHTS_FILE = "weights.safetensors"


# --------------------------------------------------------------------------------------------- task
@dataclass
class FewShotTask:
    """Classes, their text targets and how labels are read from a manifest.

    Attributes:
        classes: the K class (single) or condition (multi) names; also the label column names (multi).
        kind: ``single`` or ``multi``.
        names: short text per target for prompt learning (CoOp's class token): K for single, 2K (positive
            names then negative names) for multi.
        prompts: full prompts per target (templates filled in), ensembled by averaging embeddings.
        label_column: manifest column holding the class (name or index) of a single-label task.
    """

    classes: list
    kind: str = "single"
    names: list = field(default_factory=list)
    prompts: list = field(default_factory=list)
    label_column: str = "label"

    def __post_init__(self):
        if self.kind not in TASK_KINDS:
            raise ConfigError(f"task kind must be one of {TASK_KINDS}, got '{self.kind}'")
        if len(self.classes) < (2 if self.kind == "single" else 1):
            raise ConfigError(f"a {self.kind}-label task needs more classes, got {self.classes}")
        n = self.n_targets
        if not self.names:
            self.names = list(self.classes) if self.kind == "single" else \
                list(self.classes) + [f"no {c}" for c in self.classes]
        if not self.prompts:
            self.prompts = [[f"a chest x-ray showing {name}."] for name in self.names]
        if len(self.names) != n or len(self.prompts) != n:
            raise ConfigError(f"a {self.kind}-label task with {len(self.classes)} classes needs {n} target names "
                              f"and prompt lists, got {len(self.names)} and {len(self.prompts)}")

    @property
    def n_targets(self) -> int:
        return len(self.classes) * (1 if self.kind == "single" else 2)

    def to_dict(self) -> dict:
        return asdict(self)

    def labels(self, frame) -> np.ndarray:
        """Class indices ``(N,)`` (single) or a 0/1/NaN matrix ``(N, K)`` (multi) from a manifest frame."""
        if self.kind == "multi":  # a ``label/<condition>`` column (medclip.eval tables) or one named like it
            cols = [f"label/{c}" if f"label/{c}" in frame.columns else c for c in self.classes]
            missing = [c for c in cols if c not in frame.columns]
            if missing:
                raise DataError(f"manifest lacks label columns {missing} (multi-label task needs one 0/1 column "
                                f"per condition)")
            return frame[cols].to_numpy(dtype=float, copy=True)
        if self.label_column not in frame.columns:
            raise DataError(f"manifest lacks the label column '{self.label_column}' (set label_column in the "
                            f"classes file)")
        index = {str(c): i for i, c in enumerate(self.classes)}
        out = np.empty(len(frame), dtype=np.int64)
        for row, value in enumerate(frame[self.label_column].tolist()):
            key = str(value)
            if key in index:
                out[row] = index[key]
            elif key.isdigit() and int(key) < len(self.classes):
                out[row] = int(key)
            else:
                raise DataError(f"row {row}: label '{value}' is not one of the classes {self.classes}")
        return out

    def combine(self, target_logits: torch.Tensor) -> torch.Tensor:
        """Per-target logits ``(N, T)`` → per-class scores ``(N, K)`` (pos − neg for multi-label)."""
        if self.kind == "single":
            return target_logits
        k = len(self.classes)
        return target_logits[:, :k] - target_logits[:, k:]

    def probs(self, scores: torch.Tensor) -> torch.Tensor:
        """Softmax over classes (single) or one sigmoid per condition (multi)."""
        return scores.softmax(-1) if self.kind == "single" else scores.sigmoid()

    def loss(self, scores: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Cross-entropy (single) or BCE over known labels (multi)."""
        if self.kind == "single":
            return F.cross_entropy(scores, y.long())
        known = ~torch.isnan(y)
        return F.binary_cross_entropy_with_logits(scores[known], y[known].float())

    def target_matrix(self, y: np.ndarray) -> torch.Tensor:
        """Labels as one row per image over the T text targets (Tip-Adapter's cache values)."""
        if self.kind == "single":
            return F.one_hot(torch.as_tensor(y).long(), len(self.classes)).float()
        pos = torch.nan_to_num(torch.as_tensor(y, dtype=torch.float32), nan=0.5)
        return torch.cat([pos, 1 - pos], dim=1)


def selection_score(task: FewShotTask, scores, y: np.ndarray) -> tuple[float, float]:
    """Validation score to maximise when choosing hyperparameters (probe C, Tip's alpha/beta).

    Accuracy (single-label) or mean AUROC over conditions (multi-label), then minus the NLL to break the
    ties that tiny validation sets produce. Computed directly (ranks), as it runs hundreds of times.
    """
    scores = torch.as_tensor(np.asarray(scores, dtype=np.float64))
    y_t = torch.as_tensor(np.asarray(y, dtype=np.float64))
    nll = float(task.loss(scores, y_t))
    if task.kind == "single":
        return float((scores.argmax(1) == y_t.long()).double().mean()), -nll
    aucs = [_rank_auroc(y_t[:, c].numpy(), scores[:, c].numpy()) for c in range(scores.shape[1])]
    aucs = [a for a in aucs if not np.isnan(a)]
    return (float(np.mean(aucs)) if aucs else 0.0), -nll


def _rank_auroc(y: np.ndarray, s: np.ndarray) -> float:
    """AUROC by the Mann-Whitney rank formula (ties get average ranks); NaN labels ignored."""
    from scipy.stats import rankdata

    known = ~np.isnan(y)
    y, s = y[known], s[known]
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


# ------------------------------------------------------------------------------------- text side
def encode_prompt_sets(model, tokenizer, prompt_sets: Sequence[Sequence[str]]) -> torch.Tensor:
    """One normalised embedding per prompt set (CLIP prompt ensembling, :func:`medclip.eval.prompts.ensemble`).

    Unlike ``medclip.eval.prompts.class_embeddings`` gradients flow when enabled (LoRA trains through
    it); wrap in ``torch.no_grad()`` otherwise.
    """
    from medclip.eval.prompts import ensemble

    flat = [p for prompts in prompt_sets for p in prompts]
    ids = tokenizer(flat).to(model.logit_scale.device)
    feats = model.encode_text(ids)
    out, start = [], 0
    for prompts in prompt_sets:
        out.append(ensemble(feats[start:start + len(prompts)]))
        start += len(prompts)
    return torch.stack(out)


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


# ---------------------------------------------------------------------------------- feature cache
_HASHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def model_hash(model) -> str:
    """sha256 over the image tower's weights and config (memoised per model object)."""
    if model in _HASHES:
        return _HASHES[model]
    digest = hashlib.sha256(json.dumps(asdict(model.config.vision), sort_keys=True).encode())
    for name, tensor in sorted(model.visual.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    _HASHES[model] = digest.hexdigest()
    return _HASHES[model]


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
        return f"{model_hash(model)[:16]}-{thash[:12]}"

    def _space(self, key: str) -> dict[str, torch.Tensor]:
        if key not in self._store:
            self._store[key] = {}
            folder = os.path.join(self.cache_dir, key) if self.cache_dir else None
            if folder and os.path.isdir(folder):
                from safetensors.torch import load_file

                for name in sorted(os.listdir(folder)):
                    if name.endswith(".safetensors"):
                        self._store[key].update(load_file(os.path.join(folder, name)))
        return self._store[key]

    def put(self, model, paths: Sequence[str], features: torch.Tensor) -> None:
        """Store precomputed features (normalised here) for ``paths``; used for synthetic tasks and shards."""
        key = self.key(model)
        space = self._space(key)
        new = {_path_key(p): f.detach().float().cpu().contiguous() for p, f in
               zip(paths, F.normalize(features.float(), dim=-1))}
        space.update(new)
        if self.cache_dir and new:
            from safetensors.torch import save_file

            folder = os.path.join(self.cache_dir, key)
            os.makedirs(folder, exist_ok=True)
            shard = os.path.join(folder, f"features-{hashlib.sha1(''.join(sorted(new)).encode()).hexdigest()[:16]}")
            save_file(new, f"{shard}.{os.getpid()}.tmp", metadata={"format": "pt"})
            os.replace(f"{shard}.{os.getpid()}.tmp", f"{shard}.safetensors")  # atomic: no torn shard if killed

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


# ---------------------------------------------------------------------------------- the interface
class FewShotMethod:
    """Base class: adapt a frozen CLIP model to a task from a few labelled images.

    Subclasses set ``name`` and ``defaults`` (their hyperparameters) and implement ``_fit``,
    ``_scores`` (per-class logits ``(N, K)`` from the test frame's images), ``state_dict`` and
    ``load_state_dict``. Unknown hyperparameters raise :class:`~medclip.errors.ConfigError`.

    Args:
        model: a medclip CLIP model; never modified (its towers stay bit-identical).
        task: the classes and prompts.
        cache: the image-feature cache (a memory-only one by default).
        tokenizer: the model's tokenizer (defaults to ``medclip.get_tokenizer(model.config)``).
        seed: seeds initialisation and shuffling.
        progress: show tqdm bars.
        **hparams: method hyperparameters overriding ``defaults``.
    """

    name: ClassVar[str] = ""
    defaults: ClassVar[dict] = {}

    def __init__(self, model, task: FewShotTask, cache: FeatureCache | None = None, tokenizer=None, seed: int = 0,
                 progress: bool = False, **hparams):
        unknown = sorted(set(hparams) - set(self.defaults))
        if unknown:
            raise ConfigError(f"{self.name}: unknown option(s) {unknown} (valid: {sorted(self.defaults)})")
        self.model, self.task, self.seed, self.progress = model, task, seed, progress
        self.cache = cache if cache is not None else FeatureCache()
        self._tokenizer = tokenizer
        self.hparams = {**self.defaults, **hparams}
        self.history: list[float] = []  # training loss per epoch/iteration, for curves and tests
        self.budget: dict = {}  # what the run actually used (epochs, iterations) for the results CSV
        self.selected: dict = {}  # values chosen on validation (C, alpha, beta)
        self.fitted = False

    # -- helpers shared by methods
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            import medclip

            self._tokenizer = medclip.get_tokenizer(self.model.config)
        return self._tokenizer

    def generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(int(self.seed))

    def image_features(self, frame) -> torch.Tensor:
        return self.cache.features(self.model, frame["image"].tolist())

    @torch.no_grad()
    def text_features(self) -> torch.Tensor:
        """The task's target prompt ensembles through the frozen text tower ``(T, D)``."""
        with frozen(self.model):
            return encode_prompt_sets(self.model, self.tokenizer, self.task.prompts)

    def logit_scale(self) -> float:
        return float(self.model.get_logit_scale().detach())

    # -- the interface
    def fit(self, train, val=None) -> FewShotMethod:
        """Fit on the ``train`` frame; ``val`` (may be None) selects hyperparameters where the method has any."""
        if len(train) == 0:
            raise DataError(f"{self.name}: the training split is empty")
        with frozen(self.model):
            self._fit(train, val)
        self.fitted = True
        return self

    @torch.no_grad()
    def predict_proba(self, test) -> np.ndarray:
        """Class probabilities ``(N, K)``: rows sum to 1 (single) or one probability per condition (multi)."""
        with frozen(self.model):
            return self.task.probs(self._scores(test).float()).cpu().numpy().astype(np.float64)

    def save(self, folder: str) -> None:
        """Write ``method.json`` (name, hyperparameters, task, selected values) and the learned weights."""
        from safetensors.torch import save_file

        os.makedirs(folder, exist_ok=True)
        meta = {"method": self.name, "hparams": self.hparams, "task": self.task.to_dict(), "seed": self.seed,
                "selected": self.selected, "budget": self.budget}
        with open(os.path.join(folder, METHOD_FILE), "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2, default=str)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        if state:
            save_file(state, os.path.join(folder, WEIGHTS_FILE), metadata={"method": self.name})

    def load(self, folder: str) -> FewShotMethod:
        """Restore what :meth:`save` wrote (same method and task) onto this instance."""
        from safetensors.torch import load_file

        meta = read_method_meta(folder)
        if meta["method"] != self.name:
            raise ConfigError(f"{folder} holds a '{meta['method']}' adapter, not '{self.name}'")
        if meta["task"]["classes"] != list(self.task.classes) or meta["task"]["kind"] != self.task.kind:
            raise ConfigError(f"{folder} was trained for {meta['task']['kind']}-label classes "
                              f"{meta['task']['classes']}, not {self.task.kind}-label {list(self.task.classes)}")
        self.hparams, self.selected, self.budget = meta["hparams"], meta["selected"], meta["budget"]
        weights = os.path.join(folder, WEIGHTS_FILE)
        self.load_state_dict(load_file(weights) if os.path.exists(weights) else {})
        self.fitted = True
        return self

    # -- what subclasses implement
    def _fit(self, train, val) -> None:
        raise NotImplementedError

    def _scores(self, test) -> torch.Tensor:
        raise NotImplementedError

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        return None


# ------------------------------------------------------------------------------------- registry
_METHODS: dict[str, type[FewShotMethod]] = {}


def register_method(cls: type[FewShotMethod]) -> type[FewShotMethod]:
    """Class decorator: make ``cls`` available as ``create_method(cls.name, ...)``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a name")
    _METHODS[cls.name] = cls
    return cls


def list_methods() -> list[str]:
    """Registered method names."""
    return sorted(_METHODS)


def get_method_class(name: str) -> type[FewShotMethod]:
    if name not in _METHODS:
        raise ConfigError(f"unknown few-shot method '{name}' (available: {', '.join(list_methods())})")
    return _METHODS[name]


def create_method(name: str, model, task: FewShotTask, **kwargs) -> FewShotMethod:
    """Instantiate a registered method (see :class:`FewShotMethod` for the arguments)."""
    return get_method_class(name)(model, task, **kwargs)


def read_method_meta(folder: str) -> dict:
    path = os.path.join(folder, METHOD_FILE)
    if not os.path.exists(path):
        raise MissingFileError(f"adapter folder has no {METHOD_FILE}: {folder} (point at a run's adapter folder)")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def load_method(folder: str, model, cache: FeatureCache | None = None, **kwargs) -> FewShotMethod:
    """Rebuild a saved adapter on ``model`` (the same base model it was trained on)."""
    meta = read_method_meta(folder)
    task = FewShotTask(**meta["task"])
    method = create_method(meta["method"], model, task, cache=cache, seed=meta.get("seed", 0), **kwargs)
    return method.load(folder)
