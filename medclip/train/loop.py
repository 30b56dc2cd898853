"""The pretraining loop: read top to bottom.

One optimizer step = ``accumulation`` micro-batches, each: forward under autocast → (gather features
over processes) → contrastive loss → scaled backward; then unscale → clip → step → schedule. With
``gradcache_chunk`` the micro-batch is embedded in chunks instead (see :mod:`medclip.train.gradcache`).
Rank 0 logs, validates and checkpoints; every process sees the same global loss.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
import yaml

from ..errors import MedclipError
from ..loss import gather_features, gather_ids, get_loss
from ..version import __version__
from .accel import configure_backends, to_device
from .build import autocast_context, build_data, build_model, resolve_precision, seed_everything, set_train_mode
from .build import train_loader as make_loader
from .checkpoint import list_checkpoints, load_newest_good, nonfinite_tensors, save_checkpoint, save_model_atomic
from .distributed import DistInfo, barrier, cleanup_distributed, init_distributed, no_sync
from .gradcache import gradcache_backward
from .logging import MetricsLogger, plot_loss_curve
from .optim import build_optimizer, build_scheduler
from .rundir import RunLock, prepare_run_dir
from .validate import validate

logger = logging.getLogger("medclip.train")

class TrainingDiverged(MedclipError):
    """The loss became NaN or infinite."""


def forward_backward(model, batch: dict, cfg, device, precision: str, scaler, loss_divisor: float = 1.0,
                     sync: bool = True) -> float:
    """Loss of one micro-batch over the global batch; gradients accumulate into ``.grad``."""
    images, texts = to_device(batch, device)
    loss_fn = get_loss(cfg.loss)
    if getattr(cfg, "mask_identical_reports", False):  # identical reports are not each other's negatives
        loss_fn = partial(loss_fn, text_ids=gather_ids(_text_ids(batch).to(device)))
    if cfg.gradcache_chunk:
        autocast = partial(autocast_context, device, precision)
        def backward(loss):
            scaler.scale(loss / loss_divisor).backward()

        return float(gradcache_backward(model, images, texts, cfg.gradcache_chunk, loss_fn, autocast, backward, sync))
    with no_sync(model, sync):
        # ---- mixed precision: forward and loss under autocast (fp32 on CPU: a no-op context) ----
        with autocast_context(device, precision):
            out = model(images, texts)
            out["image_features"], out["text_features"] = gather_features(out["image_features"],
                                                                          out["text_features"])
            loss = loss_fn(**out)
        # ---- backward outside autocast; GradScaler scales only for fp16 (disabled otherwise) ----
        scaler.scale(loss / loss_divisor).backward()
    return loss.item()


def _text_ids(batch: dict) -> torch.Tensor:
    if "text_id" not in batch:
        raise MedclipError("train.mask_identical_reports needs report ids from the data source (CSV manifests give "
                           "them); this source has none: set train.mask_identical_reports=false")
    return torch.as_tensor(batch["text_id"], dtype=torch.int64)


def optimizer_step(model, optimizer, scheduler, scaler, clip_grad: float) -> None:
    """Unscale, clip, step (skipped by the scaler on fp16 overflow), update the scale and the lr."""
    if clip_grad:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], clip_grad)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()


class Run:
    """One pretraining run: its parts (model, optimizer, schedule, data, logs) and the state that moves.

    Built once per invocation (resuming from the newest checkpoint when asked); :func:`train` drives it
    with :meth:`train_step`, :meth:`validate`, :meth:`checkpoint` and :meth:`finish`. The global step is
    the scheduler's counter, so a checkpoint's step and its schedule can never disagree.
    """

    def __init__(self, recipe, run_dir: Path, info: DistInfo, resume: bool = False):
        cfg = self.cfg = recipe.train
        self.recipe, self.run_dir, self.info, self.device = recipe, run_dir, info, info.device
        self.precision = resolve_precision(cfg.precision, info.device, cfg.allow_slow_bf16)
        self.model, self.core = build_model(recipe, info)
        if info.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            _write_run_files(run_dir, recipe, self.precision, info.world_size)
        barrier()
        self.data = build_data(recipe, self.core.config, info, run_dir)
        self.images_per_step = cfg.batch_size * info.world_size * cfg.accumulation
        by_samples = math.ceil(cfg.max_samples / self.images_per_step) if cfg.max_samples else sys.maxsize
        self.total = min(max(1, len(self.data.batches) // cfg.accumulation) * cfg.epochs, cfg.max_steps or sys.maxsize,
                         by_samples)
        self.optimizer = build_optimizer(self.core, cfg)
        self.scheduler = build_scheduler(self.optimizer, self._warmup_steps(), self.total)
        self.scaler = torch.amp.GradScaler(info.device.type, enabled=self.precision == "fp16")
        seed_everything(cfg.seed + info.rank)  # augmentation/dropout stream (model init used cfg.seed)
        # the state a checkpoint carries besides the tensors (names are the keys of state.json)
        self.epoch, self.position, self.best_val_loss, self.first_loss = 0, 0, None, None
        self.last_loss, self.metrics, self.stopped_by = None, {}, None
        if resume:
            self._resume()
        self.logger = MetricsLogger(run_dir, enabled=info.is_main)
        self.logger.truncate_after(self.step)

    def _warmup_steps(self) -> int:
        """``train.warmup`` steps, or ``train.warmup_samples`` pairs in steps of this run's global batch."""
        cfg = self.cfg
        steps = cfg.warmup if cfg.warmup_samples is None else math.ceil(cfg.warmup_samples / self.images_per_step)
        if steps and steps >= 0.5 * self.total:
            logger.warning("the lr warm-up takes %d of the run's %d steps (%d pairs per step over %d process(es)): "
                           "the run spends half or more of its steps below the peak lr; lower train.warmup or give "
                           "it in pairs (train.warmup_samples)", steps, self.total, self.images_per_step,
                           self.info.world_size)
        return steps

    @property
    def step(self) -> int:
        """Optimizer steps done (the scheduler's counter)."""
        return self.scheduler.last_epoch

    def _resume(self) -> None:
        found = load_newest_good(self.run_dir, self.core, self.optimizer, self.scheduler, self.scaler)
        if found is None:
            logger.info("no usable checkpoint in %s; starting from scratch", self.run_dir / "checkpoints")
            return
        folder, meta = found
        for key in ("epoch", "position", "best_val_loss", "first_loss"):
            setattr(self, key, meta.get(key, getattr(self, key)))
        logger.info("resumed from %s (step %d, lr %.3g)", folder, self.step, self.optimizer.param_groups[0]["lr"])

    def train_step(self, micro: list[dict]) -> float:
        """One optimizer step over ``accumulation`` micro-batches; raises before applying a NaN/inf loss."""
        cfg = self.cfg
        losses = [forward_backward(self.model, b, cfg, self.device, self.precision, self.scaler, cfg.accumulation,
                                   sync=i == len(micro) - 1) for i, b in enumerate(micro)]
        loss = sum(losses) / len(losses)
        if not math.isfinite(loss):
            raise TrainingDiverged(_diverged(f"loss is {loss} at step {self.step + 1}; stopped without applying it",
                                             self.run_dir))
        optimizer_step(self.model, self.optimizer, self.scheduler, self.scaler, cfg.clip_grad)
        self.last_loss = loss
        self.first_loss = loss if self.first_loss is None else self.first_loss
        return loss

    def validate(self) -> None:
        """Validation metrics (every process encodes a slice); rank 0 logs them and writes ``best/`` when the
        validation loss improves."""
        if self.data.val is not None:
            self.ensure_finite("best/")
            autocast = partial(autocast_context, self.device, self.precision)
            self.metrics = validate(self.core, self.data.val, self.device, autocast, get_loss(self.cfg.loss),
                                    self.cfg.batch_size)
            improved = self.best_val_loss is None or self.metrics["val_loss"] < self.best_val_loss
            self.best_val_loss = self.metrics["val_loss"] if improved else self.best_val_loss
            if self.info.is_main:
                self.logger.log({"step": self.step, "epoch": self.epoch, **self.metrics})
                if improved:
                    save_model_atomic(self.core, self.run_dir / "best", extra=self._model_extra())
            set_train_mode(self.core, self.cfg)
        barrier()

    def checkpoint(self) -> None:
        """A resumable checkpoint of the current step (written by rank 0; all ranks wait for it)."""
        self.ensure_finite("the checkpoint")
        if self.info.is_main:
            state = {"epoch": self.epoch, "position": self.position, "best_val_loss": self.best_val_loss,
                     "first_loss": self.first_loss, "recipe": self.recipe.to_dict(), "metrics": self.metrics}
            save_checkpoint(self.run_dir, self.step, self.core, self.optimizer, self.scheduler, self.scaler, state,
                            self.cfg.keep_last_k)
        barrier()

    def log(self, bar, stop_at: int, seconds_per_step: float) -> None:
        """One metrics row (loss, lr, logit scale); a progress line on stderr when it is not a terminal."""
        row = {"step": self.step, "epoch": self.epoch, "loss": self.last_loss,
               "lr": self.optimizer.param_groups[0]["lr"], "logit_scale": float(self.core.get_logit_scale().detach())}
        self.logger.log(row)
        bar.set_postfix(loss=f"{self.last_loss:.3f}", step=f"{self.step}/{stop_at}")
        if self.info.is_main and not sys.stderr.isatty():
            eta = _duration(seconds_per_step * (stop_at - self.step))
            logger.info("step %d/%d loss %.4f lr %.2e %.2f s/step ETA %s", self.step, stop_at, self.last_loss,
                        row["lr"], seconds_per_step, eta)

    def finish(self) -> dict:
        """Final validation, ``model/``, closed logs and the loss curve; the run's result."""
        self.validate()
        if self.info.is_main:
            self.ensure_finite("model/")
            save_model_atomic(self.core, self.run_dir / "model", extra=self._model_extra())
            self.logger.close()
            plot_loss_curve(self.logger.path, self.run_dir / "loss_curve.png")
        barrier()
        return {"step": self.step, "first_loss": self.first_loss, "last_loss": self.last_loss,
                "planned_steps": self.total, "stopped_by": self.stopped_by,
                "lr": self.optimizer.param_groups[0]["lr"], **self.metrics}

    def ensure_finite(self, what: str) -> None:
        """Raise :class:`TrainingDiverged` instead of saving ``what`` when a weight is NaN/inf."""
        bad = nonfinite_tensors(self.core)
        if bad:
            raise TrainingDiverged(_diverged(f"weights became non-finite by step {self.step} ({bad[0]} and "
                                             f"{len(bad) - 1} more); {what} was not saved", self.run_dir))

    def _model_extra(self) -> dict:
        return {"recipe": self.recipe.to_dict(), "step": self.step}


def train(recipe, output: str, resume: bool = False, max_steps: int | None = None,
          max_minutes: float | None = None, overwrite: bool = False) -> dict:
    """Pretrain ``recipe`` into ``output`` (checkpoints, logs, final ``output/model``); return final metrics.

    Args:
        recipe: a :class:`~medclip.train.config.Recipe`.
        output: the run folder.
        resume: continue from the newest complete checkpoint in ``output/checkpoints``.
        max_steps: stop (with a checkpoint) at this global step; the lr schedule is unchanged.
        max_minutes: stop (with a checkpoint) after this many minutes of this invocation (None: the
            recipe's ``train.max_minutes``).
        overwrite: delete a previous run's outputs in ``output`` first (see :mod:`medclip.train.rundir`).

    Raises:
        TrainingDiverged: on a NaN/inf loss or weights (nothing broken is saved; earlier checkpoints are kept).
        RunFolderError: ``output`` is in use, holds a run (without ``resume``/``overwrite``), or the resumed
            recipe changes a key that cannot change.
    """
    if recipe.train.threads:
        torch.set_num_threads(recipe.train.threads)
    configure_backends(recipe.train.deterministic, recipe.train.tf32)  # before CUDA starts
    info, run_dir, lock = init_distributed(recipe.train.device), Path(output), None
    try:
        if info.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            lock = RunLock(run_dir).acquire()
            prepare_run_dir(run_dir, recipe, resume, overwrite)
        barrier()
        run = Run(recipe, run_dir, info, resume)
        minutes = recipe.train.max_minutes if max_minutes is None else max_minutes  # the flag overrides the recipe
        _fit(run, min(run.total, max_steps or run.total), minutes)
        return run.finish()
    finally:
        if lock is not None:
            lock.release()
        cleanup_distributed()


def _fit(run: Run, stop_at: int, max_minutes: float | None) -> None:
    """The loop: epochs of micro-batches → optimizer steps, with logging, budgets, validation, checkpoints."""
    from tqdm.auto import tqdm

    cfg, started, first_step = run.cfg, time.monotonic(), run.step
    bar = tqdm(total=stop_at * run.images_per_step, initial=run.step * run.images_per_step, unit="img",
               disable=not (run.info.is_main and sys.stderr.isatty()))
    stopped = run.step >= stop_at
    while not stopped and run.epoch < cfg.epochs:
        micro = []
        for batch in make_loader(run.data, run.epoch, run.position, run.device):
            micro.append(batch)
            run.position += 1
            if len(micro) < cfg.accumulation:
                continue
            run.train_step(micro)
            micro, elapsed = [], time.monotonic() - started
            if run.step % cfg.log_every == 0 or run.step == stop_at:
                run.log(bar, stop_at, elapsed / (run.step - first_step))
            bar.update(run.images_per_step)
            if cfg.eval_every_steps and run.step % cfg.eval_every_steps == 0 and run.step < stop_at:
                run.validate()
            out_of_time = _any_rank(max_minutes is not None and elapsed > 60 * max_minutes, run.device)
            stopped = run.step >= stop_at or out_of_time
            if stopped and run.step < run.total:
                run.stopped_by = "time" if out_of_time else "steps"
            if stopped or (cfg.checkpoint_every and run.step % cfg.checkpoint_every == 0):
                run.checkpoint()
            if stopped:
                break
        if not stopped:  # epoch finished
            run.epoch, run.position = run.epoch + 1, 0
            if cfg.eval_every and run.epoch % cfg.eval_every == 0 and run.epoch < cfg.epochs:
                run.validate()
            run.checkpoint()
            stopped = run.step >= stop_at
    bar.close()


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _diverged(what: str, run_dir: Path) -> str:
    """The divergence message: what happened, the last good checkpoint, and how to continue."""
    good = list_checkpoints(run_dir)
    return (f"{what}. Last good checkpoint: {good[-1] if good else 'none'} (lower train.lr, e.g. --set "
            f"train.lr=1e-4, or use train.precision=fp32, then --resume)")


def _any_rank(flag: bool, device) -> bool:
    """True when ``flag`` is true on any process (so all stop together)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor(float(flag), device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _write_run_files(run_dir: Path, recipe, precision: str, world_size: int) -> None:
    """The resolved recipe (re-runnable) and run facts, next to the outputs."""
    with open(run_dir / "recipe.yaml", "w", encoding="utf-8") as f:
        f.write(f"# resolved recipe, medclip {__version__}, precision {precision}, {world_size} process(es)\n")
        yaml.safe_dump(recipe.to_dict(), f, sort_keys=False)
