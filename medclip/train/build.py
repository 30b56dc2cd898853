"""Everything a run needs before its first step: device precision, model (locked, checkpointed, DDP), data."""

from __future__ import annotations

import contextlib
import logging
import random

import numpy as np
import torch

from ..errors import ConfigError
from .accel import accelerate_model, pin_memory
from .distributed import DistInfo

logger = logging.getLogger("medclip.train")


def seed_everything(seed: int) -> None:
    """Seed torch, NumPy and Python's ``random``."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def resolve_precision(requested: str, device: torch.device, allow_slow_bf16: bool = False) -> str:
    """``auto`` → bf16 (CUDA with bf16) / fp16 (older CUDA) / fp32 (CPU); refuse slow or impossible choices.

    Raises:
        ConfigError: fp16 on CPU, or bf16 on a CPU without native bf16 unless ``allow_slow_bf16``.
    """
    if device.type == "cuda":
        if requested == "auto":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return requested
    if requested == "fp16":
        raise ConfigError("train.precision=fp16 needs a CUDA GPU; on CPU use fp32 (default) or bf16")
    if requested == "bf16" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        if not allow_slow_bf16:
            raise ConfigError("this CPU has no native bf16 (AVX512-BF16/AMX): bf16 would be hundreds of times "
                              "slower than fp32. Use train.precision=fp32, or set train.allow_slow_bf16=true")
        logger.warning("bf16 on a CPU without native bf16 support: expect a very slow run")
    return "fp32" if requested == "auto" else requested


def autocast_context(device: torch.device, precision: str):
    """The ``torch.autocast`` context of a precision (a no-op context for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def build_model(recipe, info: DistInfo):
    """Create the model (seeded, identical on every rank), lock towers, enable checkpointing, wrap in DDP.

    Returns:
        ``(model_for_training, unwrapped_model)``: the first is DDP-wrapped when ``world_size > 1``.
    """
    from ..factory import create_model

    cfg = recipe.train
    torch.manual_seed(cfg.seed)
    model = create_model(recipe.model, device=info.device)
    if cfg.init_from:
        from .continued import load_init_weights

        load_init_weights(model, cfg)
    from .continued import image_groups, lock_tower, text_groups

    if cfg.lock_image:
        lock_tower(model.visual, image_groups(model.visual), cfg.lock_image_unlocked_groups)
    if cfg.lock_text:
        lock_tower(model.text, text_groups(model.text), cfg.lock_text_unlocked_layers)
    if cfg.lock_image and cfg.train_image_head:
        model.visual.head.requires_grad_(True)
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    accelerate_model(model, cfg.channels_last, cfg.compile)
    set_train_mode(model, cfg)
    if info.world_size == 1:
        return model, model
    from torch.nn.parallel import DistributedDataParallel

    ids = [info.local_rank] if info.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False), model


def set_train_mode(model, cfg) -> None:
    """Train mode, except locked towers stay in eval mode (frozen dropout and norm statistics)."""
    from .continued import freeze_locked_modules

    model.train()
    for locked, unlocked, tower in ((cfg.lock_image, cfg.lock_image_unlocked_groups, model.visual),
                                    (cfg.lock_text, cfg.lock_text_unlocked_layers, model.text)):
        if locked and not unlocked:
            tower.eval()
        elif locked:  # partly unlocked: the frozen modules keep their norm statistics
            freeze_locked_modules(tower)


def build_data(recipe, model_config, info: DistInfo, run_dir):
    """The run's :class:`~medclip.data.source.DataSource` (CSV manifest or WebDataset shards) for this rank.

    Its batches hold ``train.batch_size`` rows per process, its validation loader ``data.eval_batch_size``.

    Raises:
        DataError: when the training split is smaller than one global batch.
    """
    from ..data.source import build_source
    from ..tokenizer import get_tokenizer

    return build_source(recipe, model_config, get_tokenizer(model_config), info.rank, info.world_size,
                        out_dir=run_dir if info.is_main else None)


def train_loader(source, epoch: int, start: int, device):
    """The source's loader for one epoch from micro-batch ``start``; each sample's augmentation is seeded by (seed,
    epoch, sample), so workers, ranks and a mid-epoch resume all see the same draws."""
    return source.epoch_loader(epoch, start, pin_memory=pin_memory(device))
