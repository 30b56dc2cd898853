"""Everything a run needs before its first step: device precision, model (locked, checkpointed, DDP), data."""

from __future__ import annotations

import contextlib
import logging
import random

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..errors import ConfigError, DataError
from .accel import accelerate_model, pin_memory
from .distributed import DistInfo, SeededSamples, ShardedBatchSampler, mixed_seed

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


def build_data(recipe, model_config, info: DistInfo, run_dir) -> tuple:
    """Data loaders of the data layer, plus the resumable sharded batch sampler for training.

    Returns:
        ``(train_dataset, sampler, val_loader_or_None)``; the sampler yields ``train.batch_size`` rows per
        process, the validation loader ``data.eval_batch_size``.

    Raises:
        DataError: when the training split is smaller than one global batch.
    """
    from ..data.dataset import build_dataloaders
    from ..tokenizer import get_tokenizer

    cfg = recipe.train
    if recipe.data.shards:  # WebDataset shards: medclip.data.source.ShardSource stands in for dataset + sampler
        from ..data.source import shard_data

        return shard_data(recipe, model_config, get_tokenizer(model_config), info.rank, info.world_size)
    loaders = build_dataloaders(recipe.data, model_config, get_tokenizer(model_config), seed=cfg.seed,
                                out_dir=run_dir if info.is_main else None)
    if "train" not in loaders:
        raise DataError(f"{recipe.data.manifest}: no training rows (check the split column)")
    dataset = loaders["train"].dataset
    batch_size = cfg.batch_size
    if len(dataset) < batch_size * info.world_size:
        raise DataError(f"{recipe.data.manifest}: {len(dataset)} training rows, fewer than one global batch "
                        f"({batch_size} x {info.world_size} processes); lower train.batch_size")
    sampler = ShardedBatchSampler(len(dataset), batch_size, cfg.seed, info.rank, info.world_size)
    if "val" not in loaders:
        logger.warning("no validation rows (data.val is 0, or too few patients): no validation metrics and no "
                       "best/; test rows are never used for validation")
    val = loaders.get("val")
    if val is not None and cfg.val_max_pairs and len(val.dataset) > cfg.val_max_pairs:
        val = _fixed_subset(val, cfg.val_max_pairs, cfg.seed)
    return dataset, sampler, val


def _fixed_subset(loader: DataLoader, n: int, seed: int) -> DataLoader:
    """A loader over a seeded, fixed subset of ``n`` pairs of ``loader``'s dataset (same every validation)."""
    from ..data.dataset import ImageReportDataset

    full = loader.dataset
    keep = np.sort(np.random.default_rng(seed).choice(len(full), size=n, replace=False))
    logger.info("validation on a fixed subset of %d of %d pairs (train.val_max_pairs)", n, len(full))
    subset = ImageReportDataset(full.df.iloc[keep], full.image_transform, full.tokenizer, full.label_columns)
    return DataLoader(subset, batch_size=loader.batch_size, shuffle=False, num_workers=loader.num_workers)


def train_loader(dataset, sampler: ShardedBatchSampler, recipe, epoch: int, start: int, device) -> DataLoader:
    """A loader for one epoch from micro-batch ``start``; each sample's augmentation is seeded by (seed, epoch,
    index), so workers, ranks and a mid-epoch resume all see the same draws."""
    sampler.set_epoch(epoch, start)
    if hasattr(dataset, "epoch_loader"):  # shards: the source plans its own per-rank, per-worker batches
        return dataset.epoch_loader(epoch, start, pin_memory=device.type == "cuda")
    generator = torch.Generator().manual_seed(mixed_seed(recipe.train.seed, epoch))  # worker base seeds
    samples = SeededSamples(dataset, recipe.train.seed, epoch)
    return DataLoader(samples, batch_sampler=sampler, num_workers=recipe.data.num_workers, generator=generator,
                      pin_memory=pin_memory(device))
