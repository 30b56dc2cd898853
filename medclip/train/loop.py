"""The pretraining loop: read top to bottom.

One optimizer step = ``accumulation`` micro-batches, each: forward under autocast → (gather features
over processes) → contrastive loss → scaled backward; then unscale → clip → step → schedule. With
``gradcache_chunk`` the micro-batch is embedded in chunks instead (see :mod:`medclip.train.gradcache`).
Rank 0 logs, validates and checkpoints; every process sees the same global loss.
"""

from __future__ import annotations

import math
import sys
import time
from functools import partial
from pathlib import Path

import torch
import yaml

from ..errors import MedclipError
from ..loss import LOSSES, gather_features
from .build import autocast_context, build_data, build_model, resolve_precision, seed_everything, set_train_mode
from .build import train_loader as make_loader
from .checkpoint import list_checkpoints, load_checkpoint, save_checkpoint, save_model_atomic
from .distributed import barrier, cleanup_distributed, init_distributed, no_sync
from .gradcache import gradcache_backward
from .logging import MetricsLogger, plot_loss_curve
from .optim import build_optimizer, build_scheduler
from .validate import validate


class TrainingDiverged(MedclipError):
    """The loss became NaN or infinite."""


def forward_backward(model, batch: dict, cfg, device, precision: str, scaler, loss_divisor: float = 1.0,
                     sync: bool = True) -> float:
    """Loss of one micro-batch over the global batch; gradients accumulate into ``.grad``."""
    images = batch["image"].to(device, non_blocking=True)
    texts = batch["text"].to(device, non_blocking=True)
    loss_fn = LOSSES[cfg.loss]
    if cfg.gradcache_chunk:
        autocast = partial(autocast_context, device, precision)
        return float(gradcache_backward(model, images, texts, cfg.gradcache_chunk, loss_fn, autocast, scaler,
                                        loss_divisor, sync))
    with no_sync(model, sync):
        # ---- mixed precision: forward and loss under autocast (fp32 on CPU: a no-op context) ----
        with autocast_context(device, precision):
            out = model(images, texts)
            image_features, text_features = gather_features(out["image_features"], out["text_features"])
            loss = loss_fn(image_features, text_features, out["logit_scale"])
        # ---- backward outside autocast; GradScaler scales only for fp16 (disabled otherwise) ----
        scaler.scale(loss / loss_divisor).backward()
    return loss.item()


def optimizer_step(model, optimizer, scheduler, scaler, clip_grad: float) -> None:
    """Unscale, clip, step (skipped by the scaler on fp16 overflow), update the scale and the lr."""
    if clip_grad:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], clip_grad)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()


def train(recipe, output: str, resume: bool = False, max_steps: int | None = None,
          max_minutes: float | None = None) -> dict:
    """Pretrain ``recipe`` into ``output`` (checkpoints, logs, final ``output/model``); return final metrics.

    Args:
        recipe: a :class:`~medclip.train.config.Recipe`.
        output: the run folder.
        resume: continue from the newest complete checkpoint in ``output/checkpoints``.
        max_steps: stop (with a checkpoint) at this global step; the lr schedule is unchanged.
        max_minutes: stop (with a checkpoint) after this many minutes of this invocation (None: the
            recipe's ``train.max_minutes``).

    Raises:
        TrainingDiverged: on a NaN/inf loss (the step is not applied; earlier checkpoints are kept).
    """
    cfg, run_dir = recipe.train, Path(output)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    info = init_distributed(cfg.device)
    try:
        precision = resolve_precision(cfg.precision, info.device, cfg.allow_slow_bf16)
        model, core = build_model(recipe, info)
        if info.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            _write_run_files(run_dir, recipe, precision, info.world_size)
        barrier()
        dataset, sampler, val_loader, batch_size = build_data(recipe, core.config, info, run_dir)
        steps_per_epoch = max(1, len(sampler) // cfg.accumulation)
        total = min(steps_per_epoch * cfg.epochs, cfg.max_steps or sys.maxsize)
        optimizer = build_optimizer(core, cfg)
        scheduler = build_scheduler(optimizer, cfg.warmup, total)
        scaler = torch.amp.GradScaler(info.device.type, enabled=precision == "fp16")
        seed_everything(cfg.seed + info.rank)  # augmentation/dropout stream (model init used cfg.seed)
        state = {"epoch": 0, "position": 0, "best_val_loss": None, "first_loss": None}
        ckpts = list_checkpoints(run_dir) if resume else []
        if ckpts:
            state.update({k: v for k, v in load_checkpoint(ckpts[-1], core, optimizer, scheduler, scaler).items()
                          if k in state})
            print(f"resumed from {ckpts[-1]} (step {scheduler.last_epoch})", file=sys.stderr)
        elif resume:
            print(f"no checkpoint in {run_dir / 'checkpoints'}; starting from scratch", file=sys.stderr)
        logger = MetricsLogger(run_dir, enabled=info.is_main)
        logger.truncate_after(scheduler.last_epoch)
        return _run(model, core, optimizer, scheduler, scaler, recipe, info, precision, dataset, sampler,
                    val_loader, batch_size, total, state, logger, run_dir, max_steps,
                    cfg.max_minutes if max_minutes is None else max_minutes)  # the flag overrides the recipe
    finally:
        cleanup_distributed()


def _run(model, core, optimizer, scheduler, scaler, recipe, info, precision, dataset, sampler, val_loader,
         batch_size, total, state, logger, run_dir, max_steps, max_minutes) -> dict:
    from tqdm.auto import tqdm

    cfg, device = recipe.train, info.device
    step, stop_at = scheduler.last_epoch, min(total, max_steps or total)
    started, metrics, last_loss = time.monotonic(), {}, None
    bar = tqdm(total=stop_at, initial=step, disable=not (info.is_main and sys.stderr.isatty()), unit="step")

    def checkpoint():
        if info.is_main:
            extra = {**state, "recipe": recipe.to_dict(), "metrics": metrics}
            save_checkpoint(run_dir, step, core, optimizer, scheduler, scaler, extra, cfg.keep_last_k)
        barrier()

    def run_validation():
        nonlocal metrics
        if info.is_main and val_loader is not None:
            metrics = validate(core, val_loader, device, partial(autocast_context, device, precision),
                               LOSSES[cfg.loss], batch_size)
            logger.log({"step": step, "epoch": state["epoch"], **metrics})
            if state["best_val_loss"] is None or metrics["val_loss"] < state["best_val_loss"]:
                state["best_val_loss"] = metrics["val_loss"]
                save_model_atomic(core, run_dir / "best", extra={"recipe": recipe.to_dict(), "step": step})
            set_train_mode(core, cfg)
        barrier()

    stopped = step >= stop_at
    while not stopped and state["epoch"] < cfg.epochs:
        micro = []
        for batch in make_loader(dataset, sampler, recipe, state["epoch"], state["position"], device):
            micro.append(batch)
            state["position"] += 1
            if len(micro) < cfg.accumulation:
                continue
            losses = [forward_backward(model, b, cfg, device, precision, scaler, cfg.accumulation,
                                       sync=i == len(micro) - 1) for i, b in enumerate(micro)]
            micro, last_loss = [], sum(losses) / len(losses)
            _stop_if_diverged(last_loss, step, run_dir)
            optimizer_step(model, optimizer, scheduler, scaler, cfg.clip_grad)
            step += 1
            state["first_loss"] = state["first_loss"] if state["first_loss"] is not None else last_loss
            if step % cfg.log_every == 0 or step == stop_at:
                _log_step(logger, bar, info.is_main, core, optimizer, state["epoch"], step, stop_at, last_loss)
            bar.update(1)
            out_of_time = max_minutes is not None and time.monotonic() - started > 60 * max_minutes
            stopped = step >= stop_at or _any_rank(out_of_time, device)
            if stopped or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
                checkpoint()
            if stopped:
                break
        if not stopped:  # epoch finished
            state["epoch"], state["position"] = state["epoch"] + 1, 0
            if cfg.eval_every and state["epoch"] % cfg.eval_every == 0 and state["epoch"] < cfg.epochs:
                run_validation()
            checkpoint()
            stopped = step >= stop_at
    bar.close()
    run_validation()
    if info.is_main:
        _save_final(core, recipe, step, logger, run_dir)
    barrier()
    return {"step": step, "first_loss": state["first_loss"], "last_loss": last_loss, **metrics}


def _save_final(core, recipe, step: int, logger, run_dir: Path) -> None:
    """The final ``model/`` folder (with its recipe), closed logs and the loss curve."""
    save_model_atomic(core, run_dir / "model", extra={"recipe": recipe.to_dict(), "step": step})
    logger.close()
    plot_loss_curve(logger.path, run_dir / "loss_curve.png")


def _stop_if_diverged(loss: float, step: int, run_dir: Path) -> None:
    """Raise :class:`TrainingDiverged` (naming the last good checkpoint) when ``loss`` is NaN/inf."""
    if not math.isfinite(loss):
        good = list_checkpoints(run_dir)
        raise TrainingDiverged(f"loss is {loss} at step {step + 1}; stopped without applying it. "
                               f"Last good checkpoint: {good[-1] if good else 'none'} (lower train.lr, "
                               f"use train.precision=fp32, then --resume)")


def _log_step(logger, bar, is_main: bool, core, optimizer, epoch: int, step: int, stop_at: int, loss: float) -> None:
    """One metrics row (loss, lr, logit scale) to the logger, the progress bar, and stderr when not a TTY."""
    row = {"step": step, "epoch": epoch, "loss": loss, "lr": optimizer.param_groups[0]["lr"],
           "logit_scale": float(core.get_logit_scale().detach())}
    logger.log(row)
    bar.set_postfix(loss=f"{loss:.3f}")
    if is_main and not sys.stderr.isatty():
        print(f"step {step}/{stop_at} loss {loss:.4f} lr {row['lr']:.2e}", file=sys.stderr)


def _any_rank(flag: bool, device) -> bool:
    """True when ``flag`` is true on any process (so all stop together)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor(float(flag), device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _write_run_files(run_dir: Path, recipe, precision: str, world_size: int) -> None:
    """The resolved recipe (re-runnable) and run facts, next to the outputs."""
    from .. import __version__

    with open(run_dir / "recipe.yaml", "w", encoding="utf-8") as f:
        f.write(f"# resolved recipe, medclip {__version__}, precision {precision}, {world_size} process(es)\n")
        yaml.safe_dump(recipe.to_dict(), f, sort_keys=False)
