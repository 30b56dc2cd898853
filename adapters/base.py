"""The few-shot interface and its registry.

Every method implements :class:`FewShotMethod` (``fit(train, val)``, ``predict_proba(test)``,
``save(dir)``, ``load(dir)``) and registers itself by name with :func:`register_method`. Inputs are
manifest subsets (pandas frames with an ``image`` column and label columns); the
:class:`~medclip.eval.task.Task` says which classes and prompts, and how labels are read; a
:class:`~adapters.cache.FeatureCache` turns image paths into frozen image-tower features once.
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from medclip.config import from_dict
from medclip.errors import ConfigError, DataError, MissingFileError
from medclip.eval.task import Task
from medclip.paths import save_safetensors

from .cache import FeatureCache, frozen
from .selection import against_zeroshot, selection_score  # noqa: F401  (selection_score: methods import it here)

METHOD_FILE = "method.json"
WEIGHTS_FILE = "weights.safetensors"


class Buffers(nn.Module):
    """Named tensors held as buffers: the learnable state of methods that store arrays, not layers."""

    def __init__(self, **tensors: torch.Tensor):
        super().__init__()
        for name, tensor in tensors.items():
            self.register_buffer(name, torch.as_tensor(tensor).detach().clone())


def method_config(cls: type, options: dict, where: str):
    """The typed config dataclass ``cls`` from ``options`` (strict :func:`medclip.config.from_dict`).

    Unknown keys and values of the wrong type (``lr: abc``) raise a one-line
    :class:`~medclip.errors.ConfigError`; ints are accepted where a float is expected.
    """
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise ConfigError(f"{where}: unknown option(s) {unknown} (valid: {sorted(names)})")
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in options.items():
        allowed = [t for t in typing.get_args(hints[key]) or (hints[key],) if t is not type(None)]
        if value is None and len(allowed) < len(typing.get_args(hints[key]) or (hints[key],)):
            values[key] = None
        elif float in allowed and isinstance(value, (int, float)) and not isinstance(value, bool):
            values[key] = float(value)
        elif int in allowed and isinstance(value, float) and value.is_integer():
            values[key] = int(value)
        elif any(isinstance(value, t) and not (t is int and isinstance(value, bool)) for t in allowed):
            values[key] = value
        else:
            names_ = " or ".join(t.__name__ for t in allowed)
            raise ConfigError(f"{where}.{key} must be {names_}, got {value!r}")
    return from_dict(cls, values, where)


@dataclass
class NoOptions:
    """A method without hyperparameters."""


class FewShotMethod:
    """Base class: adapt a frozen CLIP model to a task from a few labelled images.

    Subclasses set ``name`` and ``config_class`` (a dataclass of their hyperparameters), implement
    ``_fit`` (which sets :attr:`module`, an ``nn.Module`` holding every learned tensor) and ``_scores``
    (per-class logits ``(N, K)`` of the test frame's images), and, when their module has parameters
    whose shapes a saved state cannot give, ``empty_module``. Saving and loading are shared: the
    module's ``state_dict`` in safetensors.

    Args:
        model: a medclip CLIP model; never modified (its towers stay bit-identical).
        task: the classes and prompts.
        cache: the image-feature cache (a memory-only one by default).
        tokenizer: the model's tokenizer (defaults to ``medclip.get_tokenizer(model.config)``).
        seed: seeds initialisation and shuffling.
        progress: show tqdm bars.
        **hparams: method hyperparameters (fields of ``config_class``); unknown ones raise ConfigError.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""  # one line for the command list
    config_class: ClassVar[type] = NoOptions

    def __init__(self, model, task: Task, cache: FeatureCache | None = None, tokenizer=None, seed: int = 0,
                 progress: bool = False, **hparams):
        self.config = method_config(self.config_class, hparams, self.name)
        self.model, self.task, self.seed, self.progress = model, task, seed, progress
        self.cache = cache if cache is not None else FeatureCache()
        self._tokenizer = tokenizer
        self.module: nn.Module | None = None
        self.history: list[float] = []  # training loss per epoch/iteration, for curves and tests
        self.budget: dict = {}  # what the run actually used (epochs, iterations) for the results CSV
        self.selected: dict = {}  # values chosen on validation (C, alpha, beta)
        self.fitted = False

    @classmethod
    def option_names(cls) -> list[str]:
        """Names of the method's hyperparameters (the fields of ``config_class``)."""
        return [f.name for f in dataclasses.fields(cls.config_class)]

    @property
    def hparams(self) -> dict:
        """The method's hyperparameters as a plain dict (``config`` as set at construction)."""
        return dataclasses.asdict(self.config)

    # -- helpers shared by methods
    @property
    def tokenizer(self):
        """The tokenizer given at construction, else the model's (``medclip.get_tokenizer``), built once."""
        if self._tokenizer is None:
            import medclip

            self._tokenizer = medclip.get_tokenizer(self.model.config)
        return self._tokenizer

    def generator(self) -> torch.Generator:
        """A fresh CPU generator seeded with the method's ``seed`` (initialisation and shuffling)."""
        return torch.Generator().manual_seed(int(self.seed))

    def image_features(self, frame) -> torch.Tensor:
        """The frozen image tower's features ``(N, D)`` of ``frame["image"]``, through the feature cache."""
        return self.cache.features(self.model, frame["image"].tolist())

    def text_features(self) -> torch.Tensor:
        """The task's target prompt ensembles through the frozen text tower ``(T, D)`` (the zero-shot classifier's)."""
        from medclip.eval.zeroshot import ZeroShotClassifier

        with frozen(self.model):
            return ZeroShotClassifier(self.model, self.task, self.tokenizer).targets

    def logit_scale(self) -> float:
        """The frozen model's temperature (``exp`` of its learned logit scale, clamped)."""
        return float(self.model.get_logit_scale().detach())

    # -- the interface
    def fit(self, train, val=None) -> FewShotMethod:
        """Fit on the ``train`` frame; ``val`` (may be None) selects hyperparameters where the method has any."""
        if len(train) == 0:
            raise DataError(f"{self.name}: the training split is empty")
        with frozen(self.model):
            self._fit(train, val)
            if self.module is not None:
                self.module.eval()
            if self.name != "zeroshot":
                against_zeroshot(self, val)
        self.fitted = True
        return self

    def zeroshot_scores(self, frame) -> torch.Tensor:
        """The zero-shot classifier's per-class logits of ``frame`` (the starting point of prompt methods)."""
        from medclip.eval.zeroshot import ZeroShotClassifier

        if getattr(self, "_zeroshot", None) is None:
            self._zeroshot = ZeroShotClassifier(self.model, self.task, self.tokenizer)
        return self._zeroshot.logits(self.image_features(frame))

    @property
    def threshold(self) -> float:
        """The decision threshold for accuracy (chosen on validation when there was enough, else 0.5)."""
        return float(self.selected.get("threshold", 0.5))

    @torch.no_grad()
    def predict_proba(self, test) -> np.ndarray:
        """Class probabilities ``(N, K)``: rows sum to 1 (single) or one probability per condition (multi)."""
        with frozen(self.model):
            scores = self.zeroshot_scores(test) if self.selected.get("start") == "zeroshot" else self._scores(test)
            return self.task.probs(scores.float()).cpu().numpy().astype(np.float64)

    def save(self, folder: str) -> None:
        """Write ``method.json`` (name, hyperparameters, task, selected values) and the module's weights."""
        os.makedirs(folder, exist_ok=True)
        meta = {"method": self.name, "hparams": self.hparams, "task": self.task.to_dict(), "seed": self.seed,
                "selected": self.selected, "budget": self.budget}
        with open(os.path.join(folder, METHOD_FILE), "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2, default=str)
        self.save_module(folder)

    def load(self, folder: str) -> FewShotMethod:
        """Restore what :meth:`save` wrote (same method and task) onto this instance."""
        meta = read_method_meta(folder)
        if meta["method"] != self.name:
            raise ConfigError(f"{folder} holds a '{meta['method']}' adapter, not '{self.name}'")
        if meta["task"]["classes"] != list(self.task.classes) or meta["task"]["kind"] != self.task.kind:
            raise ConfigError(f"{folder} was trained for {meta['task']['kind']}-label classes "
                              f"{meta['task']['classes']}, not {self.task.kind}-label {list(self.task.classes)}")
        self.config = method_config(self.config_class, meta["hparams"], f"{folder}/{METHOD_FILE}")
        self.selected, self.budget = meta["selected"], meta["budget"]
        self.module = self.load_module(folder)
        self.module.eval()
        self.fitted = True
        return self

    def save_module(self, folder: str) -> None:
        """The module's ``state_dict`` as ``weights.safetensors`` (nothing when it holds no tensors)."""
        state = {k: v.detach().contiguous().cpu() for k, v in (self.module.state_dict() if self.module else {}).items()}
        if state:  # the user's umask, like every other output (safetensors alone writes 0600)
            save_safetensors(state, os.path.join(folder, WEIGHTS_FILE), metadata={"method": self.name})

    def load_module(self, folder: str) -> nn.Module:
        """The module :meth:`save_module` wrote, rebuilt by :meth:`empty_module` and loaded strictly."""
        from safetensors.torch import load_file

        weights = os.path.join(folder, WEIGHTS_FILE)
        state = load_file(weights) if os.path.exists(weights) else {}
        module = self.empty_module(state)
        try:
            module.load_state_dict(state)
        except RuntimeError as exc:
            raise ConfigError(f"{weights} does not fit this {self.name} config "
                              f"({str(exc).splitlines()[-1].strip()})") from None
        return module

    # -- what subclasses implement
    def _fit(self, train, val) -> None:
        raise NotImplementedError

    def _scores(self, test) -> torch.Tensor:
        raise NotImplementedError

    def empty_module(self, state: dict[str, torch.Tensor]) -> nn.Module:
        """A module of the right shapes to load ``state`` into (default: the saved tensors as buffers)."""
        return Buffers(**state)


_METHODS: dict[str, type[FewShotMethod]] = {}


def register_method(cls: type[FewShotMethod]) -> type[FewShotMethod]:
    """Class decorator: make ``cls`` available as ``create_method(cls.name, ...)``.

    Args:
        cls: a :class:`FewShotMethod` subclass with a ``name``.

    Returns:
        type[FewShotMethod]: ``cls`` itself.

    Raises:
        ValueError: ``cls`` has no ``name``.
    """
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a name")
    _METHODS[cls.name] = cls
    return cls


def list_methods() -> list[str]:
    """Registered method names.

    Returns:
        list[str]: the names, sorted.
    """
    return sorted(_METHODS)


def get_method_class(name: str) -> type[FewShotMethod]:
    """The class registered under ``name``.

    Args:
        name: a registered method name (:func:`list_methods`).

    Returns:
        type[FewShotMethod]: the method class.

    Raises:
        ConfigError: no method has that name (the available ones are listed).
    """
    if name not in _METHODS:
        raise ConfigError(f"unknown few-shot method '{name}' (available: {', '.join(list_methods())})")
    return _METHODS[name]


def create_method(name: str, model, task: Task, **kwargs) -> FewShotMethod:
    """Instantiate a registered method.

    Args:
        name: a registered method name (:func:`list_methods`).
        model: the frozen medclip CLIP model.
        task: the classes and prompts.
        **kwargs: the other arguments of :class:`FewShotMethod` (``cache``, ``tokenizer``, ``seed``,
            ``progress``) and the method's hyperparameters.

    Returns:
        FewShotMethod: the unfitted method.

    Raises:
        ConfigError: an unknown method name or hyperparameter.
    """
    return get_method_class(name)(model, task, **kwargs)


def read_method_meta(folder: str) -> dict:
    path = os.path.join(folder, METHOD_FILE)
    if not os.path.exists(path):
        raise MissingFileError(f"adapter folder has no {METHOD_FILE}: {folder} (point at a run's adapter folder)")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def load_method(folder: str, model, cache: FeatureCache | None = None, **kwargs) -> FewShotMethod:
    """Rebuild a saved adapter on ``model`` (the same base model it was trained on).

    Args:
        folder: a folder written by :meth:`FewShotMethod.save`.
        model: the base CLIP model the adapter was trained on.
        cache: the image-feature cache (a memory-only one by default).
        **kwargs: further arguments of :class:`FewShotMethod` (e.g. ``progress``).

    Returns:
        FewShotMethod: the fitted method, ready for ``predict_proba``.

    Raises:
        MissingFileError: the folder has no method file.
    """
    meta = read_method_meta(folder)
    task = Task(**meta["task"])
    method = create_method(meta["method"], model, task, cache=cache, seed=meta.get("seed", 0), **kwargs)
    return method.load(folder)
