"""Training config and recipes.

A recipe is a YAML file with three sections, loaded strictly (an unknown key is a one-line error)::

    model: tiny-vit                  # a registered architecture, or {name: ViT-B-16, vision: {in_chans: 1}},
                                     # or a full nested model config (embed_dim, vision, text, ...)
    data: {manifest: demo_data/manifest.csv, demo: true, eval_batch_size: 64}  # medclip.data.DataConfig
    train: {epochs: 10, lr: 5e-4, loss: tiled, batch_size: 32}                 # TrainConfig below

Relative paths in a recipe (``data.manifest``, ``data.cache_dir``, ...) are relative to the **current
directory** — run ``medclip pretrain`` from the repository root, as the shipped recipes assume.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

from ..config import ModelConfig, apply_overrides, from_dict, load_yaml, to_dict
from ..defaults import TRAIN_BATCH_SIZE
from ..errors import ConfigError
from ..loss import LOSS_MODEL_DEFAULTS, get_loss

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
logger = logging.getLogger("medclip.train")


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping of a pretraining run.

    Attributes:
        seed: seed of model init, shuffling, augmentation and dropout.
        epochs: passes over the training split.
        max_steps: stop after this many optimizer steps (overrides ``epochs`` when smaller).
        max_samples: the same budget in training pairs (``ceil(max_samples / global batch)`` steps), so a
            recipe plans the same amount of data on any number of processes.
        batch_size: per-process training batch. The global batch (the negatives of the loss) is
            ``batch_size × processes``. Validation and encoding use ``data.eval_batch_size``.
        accumulation: micro-batches summed into one optimizer step (plain accumulation: each micro-batch
            has its own negatives; use ``gradcache_chunk`` for one big contrastive batch).
        gradcache_chunk: when > 0, embed the batch in chunks of this size without a graph, take the loss
            over the whole batch, then replay the chunks with gradients (GradCache). 0 = off.
        lr: peak learning rate (AdamW).
        weight_decay: AdamW decay on weight matrices only (open_clip rule: no decay on biases, norms,
            ``logit_scale``, other 1-D parameters; embeddings too when ``decay_embeddings`` is false).
        decay_embeddings: apply weight decay to token/positional embeddings.
        betas: AdamW betas.
        eps: AdamW epsilon.
        warmup: linear warmup steps before the cosine decay to 0.
        warmup_samples: the warm-up in training pairs instead of steps (overrides ``warmup``): it becomes
            ``ceil(warmup_samples / (batch_size × processes × accumulation))`` steps, so the same recipe warms up
            over the same data on 1 or 64 GPUs. A warm-up of half the run or more is warned about.
        clip_grad: gradient-norm clip (0 = off).
        precision: ``auto`` (CUDA: bf16 where supported, else fp16 + GradScaler; CPU: fp32), ``fp32``,
            ``bf16`` or ``fp16`` (CUDA only).
        loss: a name from ``medclip.loss.LOSSES``: ``dense`` (N × N logits), ``tiled`` (the same InfoNCE,
            exact, O(N·d) memory) or ``siglip`` (sigmoid loss, exact, O(N·d); the model gets a learnable
            ``logit_bias`` at -10 and log scale ln 10 unless its config sets ``init_logit_bias``).
        lock_image: freeze the image tower.
        train_image_head: with ``lock_image``, still train the image projection head (LiT locks the
            pretrained trunk; a freshly initialised head is not pretrained, so it learns with the text tower).
        lock_text: freeze the text tower.
        lock_image_unlocked_groups: with ``lock_image``, leave the last N image groups trainable (timm's
            trunk groups, then the projection; see medclip.train.continued).
        lock_text_unlocked_layers: with ``lock_text``, leave the last N text groups trainable (embeddings,
            each layer, then final norm + projection).
        lr_image: learning rate of the image tower (None: ``lr``); the schedule scales it like ``lr``.
        lr_text: learning rate of the text tower (None: ``lr``).
        init_from: start from this pretrained model (any folder or file ``medclip convert`` accepts); the
            recipe then has no ``model`` section.
        mask_identical_reports: identical reports (same normalised text) are not negatives: such pairs are
            masked out of each other's InfoNCE denominators (dense and tiled, over the global batch).
        init_from_options: for ``init_from``: ``from`` (force the format), ``model_name`` (bare state
            dicts), ``text_model`` (local HF encoder folder).
        grad_checkpointing: recompute tower activations in backward (less memory, slower).
        eval_every: validate every this many epochs (0 = never); also at the end.
        eval_every_steps: also validate every this many optimizer steps (0 = off), for long epochs.
        val_max_pairs: validate on a fixed, seeded subset of at most this many validation pairs (None: all).
        checkpoint_every: also checkpoint every this many steps (0 = at epoch ends only).
        keep_last_k: step checkpoints kept (plus ``best``).
        log_every: steps between log rows / progress updates.
        max_minutes: stop cleanly (with a checkpoint) after this much training time.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        allow_slow_bf16: allow ``bf16`` on a CPU without native bf16 (hundreds of times slower).
        compile: ``torch.compile`` both towers (the text tower's blocks with dynamic shapes, so batches of
            other report lengths do not recompile); see :mod:`medclip.train.accel`.
        channels_last: NHWC memory layout for a CNN image tower (faster convolutions on CUDA).
        tf32: allow TF32 in CUDA float32 matmuls/convolutions (off: exact fp32, parity with the CPU).
        deterministic: deterministic algorithms and ``CUBLAS_WORKSPACE_CONFIG`` (exact resume on CUDA).
        threads: CPU threads for torch (None: torch's default). Tiny models on a small or busy CPU run
            faster with 1.
    """

    seed: int = 0
    epochs: int = 1
    max_steps: int | None = None
    max_samples: int | None = None
    batch_size: int = TRAIN_BATCH_SIZE
    accumulation: int = 1
    gradcache_chunk: int = 0
    lr: float = 5e-4
    weight_decay: float = 0.2
    decay_embeddings: bool = False
    betas: list = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    warmup: int = 100
    warmup_samples: int | None = None
    clip_grad: float = 1.0
    precision: str = "auto"
    loss: str = "tiled"
    lock_image: bool = False
    train_image_head: bool = False
    lock_text: bool = False
    lock_image_unlocked_groups: int = 0
    lock_text_unlocked_layers: int = 0
    lr_image: float | None = None
    lr_text: float | None = None
    init_from: str | None = None
    mask_identical_reports: bool = False
    init_from_options: dict = field(default_factory=dict)
    grad_checkpointing: bool = False
    eval_every: int = 1
    eval_every_steps: int = 0
    val_max_pairs: int | None = None
    checkpoint_every: int = 0
    keep_last_k: int = 2
    log_every: int = 10
    max_minutes: float | None = None
    device: str = "auto"
    allow_slow_bf16: bool = False
    threads: int | None = None
    compile: bool = False
    channels_last: bool = False
    tf32: bool = False
    deterministic: bool = False

    def __post_init__(self):
        for name in ("lr", "weight_decay", "eps", "clip_grad", "max_minutes"):  # YAML reads 3e-4 as a string
            value = getattr(self, name)
            if isinstance(value, str):
                try:
                    setattr(self, name, float(value))
                except ValueError:
                    raise ConfigError(f"train.{name} must be a number, got '{value}'") from None
        if self.precision not in PRECISIONS:
            raise ConfigError(f"train.precision must be one of {', '.join(PRECISIONS)}; got '{self.precision}'")
        get_loss(self.loss)  # one registry: an unknown name is a ConfigError listing the choices
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"train.device must be auto, cpu or cuda; got '{self.device}'")
        for name in ("epochs", "batch_size", "accumulation", "keep_last_k", "log_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be an integer >= 1, got {getattr(self, name)!r}")
        for name in ("gradcache_chunk", "warmup", "eval_every", "eval_every_steps", "checkpoint_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be an integer >= 0, got {getattr(self, name)!r}")
        for name in ("max_steps", "max_samples", "warmup_samples", "val_max_pairs"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"train.{name} must be an integer >= 1 (or null), got {value!r}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ConfigError(f"train.lr must be a positive number, got {self.lr!r}")
        if len(self.betas) != 2:
            raise ConfigError(f"train.betas needs two values, got {self.betas}")
        self._check_continued()
        if self.mask_identical_reports and self.loss not in ("dense", "tiled"):
            raise ConfigError(f"train.mask_identical_reports applies to the InfoNCE losses (dense, tiled), not "
                              f"train.loss: {self.loss}")
        if self.lock_image and self.lock_text and not (self.lock_image_unlocked_groups
                                                       or self.lock_text_unlocked_layers):
            raise ConfigError("train.lock_image and train.lock_text are both true: nothing but the "
                              "temperature would train; unlock one tower (or some of its groups)")

    def _check_continued(self) -> None:
        """Partial unlocking, per-tower learning rates and ``init_from`` options."""
        for name, lock in (("lock_image_unlocked_groups", "lock_image"), ("lock_text_unlocked_layers", "lock_text")):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"train.{name} must be an integer >= 0, got {value!r}")
            if value and not getattr(self, lock):
                raise ConfigError(f"train.{name} needs train.{lock}: true (it unlocks the last groups of a "
                                  f"locked tower)")
        for name in ("lr_image", "lr_text"):
            value = getattr(self, name)
            if isinstance(value, str):
                try:
                    value = float(value)
                except ValueError:
                    raise ConfigError(f"train.{name} must be a number, got '{value}'") from None
                setattr(self, name, value)
            if value is not None and not (isinstance(value, (int, float)) and value >= 0):
                raise ConfigError(f"train.{name} must be a number >= 0 (or null for train.lr), got {value!r}")
        unknown = sorted(set(self.init_from_options or {}) - {"from", "model_name", "text_model"})
        if unknown:
            raise ConfigError(f"unknown config key 'train.init_from_options.{unknown[0]}' (valid keys here: from, "
                              f"model_name, text_model)")


@dataclass
class Recipe:
    """A resolved recipe: the model, data and train configs plus the plain dict they came from."""

    model: ModelConfig
    data: object  # medclip.data.config.DataConfig
    train: TrainConfig
    raw: dict

    def to_dict(self) -> dict:
        """The fully resolved recipe (every default filled in), as saved with runs and checkpoints."""
        out = {"model": to_dict(self.model), "data": to_dict(self.data), "train": to_dict(self.train)}
        if self.train.init_from:  # the architecture is init_from's
            del out["model"]
        return out


def build_model_config(spec) -> ModelConfig:
    """``model:`` section → :class:`ModelConfig` (a name, ``{name: X, **overrides}`` or a full config)."""
    from ..registry import get_model_config

    if isinstance(spec, str):
        return get_model_config(spec)
    if isinstance(spec, dict):
        spec = dict(spec)
        name = spec.pop("name", None)
        return get_model_config(str(name), **spec) if name else from_dict(ModelConfig, spec, "model")
    raise ConfigError(f"recipe 'model' must be an architecture name or a mapping, got {type(spec).__name__}")


def recipe_from_dict(data: dict, where: str = "recipe") -> Recipe:
    """Validate a recipe dict (sections ``model``, ``data``, ``train``) into a :class:`Recipe`."""
    from ..data.config import DataConfig

    unknown = sorted(set(data) - {"model", "data", "train"})
    if unknown:
        raise ConfigError(f"{where}: unknown section '{unknown[0]}' (valid sections: data, model, train)")
    data_section, train_section = _split_batch_size(data.get("data"), data.get("train"), where)
    train = from_dict(TrainConfig, train_section, "train")
    if train.init_from:
        if "model" in data:
            raise ConfigError(f"{where}: 'model' and train.init_from are both set; the architecture comes from "
                              f"init_from: remove the model section")
        from .continued import init_model_config

        model = init_model_config(train)
    elif "model" not in data:
        raise ConfigError(f"{where}: missing 'model' section (e.g. model: tiny-vit), or set train.init_from")
    else:
        model = build_model_config(data["model"])
    if train.loss in LOSS_MODEL_DEFAULTS and model.init_logit_bias is None:  # e.g. siglip: add its bias
        model = dataclasses.replace(model, **LOSS_MODEL_DEFAULTS[train.loss])
    return Recipe(model=model, data=from_dict(DataConfig, data_section, "data"), train=train, raw=data)


def _split_batch_size(data: dict | None, train: dict | None, where: str) -> tuple[dict | None, dict | None]:
    """The deprecated ``data.batch_size`` → ``train.batch_size`` (training) and ``data.eval_batch_size``."""
    if not isinstance(data, dict) or "batch_size" not in data:
        return data, train
    data, value = dict(data), data["batch_size"]
    del data["batch_size"]
    train = dict(train) if isinstance(train, dict) else {}
    logger.warning("%s: data.batch_size is deprecated; it now sets train.batch_size (training) and "
                   "data.eval_batch_size (validation/encoding) where those are not given: write those two keys",
                   where)
    data.setdefault("eval_batch_size", value)
    train.setdefault("batch_size", value)
    return data, train


def load_recipe(path, overrides: list[str] | None = None) -> Recipe:
    """Read a recipe YAML, apply ``--set section.key=value`` overrides and validate it."""
    data = apply_overrides(load_yaml(path), overrides)
    try:
        return recipe_from_dict(data, str(path))
    except ConfigError as exc:
        msg = str(exc)
        raise ConfigError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None
