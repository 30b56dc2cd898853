"""Atomic, pickle-free training checkpoints.

A checkpoint is a folder ``<run>/checkpoints/step-000123/`` holding

* ``model/`` — a :meth:`CLIP.save_pretrained` folder (``config.json`` + ``model.safetensors``),
* ``optimizer.safetensors`` — every tensor of the optimizer state, the RNG states of torch (CPU, CUDA),
* ``state.json`` — everything else: step, epoch, batch position, optimizer hyper-parameters, scheduler
  and GradScaler states, Python/NumPy RNG states, metrics, the resolved recipe, the medclip version.

* ``checksums.json`` — the SHA-256 of every other file, written last.

It is written to ``step-000123.tmp`` and renamed into place, so a kill at any moment leaves either the
old set of checkpoints or the new one, never a half-written folder. On resume a checkpoint that is
incomplete or fails its checksums (truncated weights, garbage ``state.json``, flipped bits) is skipped
with a warning in favour of the newest good one. Nothing is unpickled on resume.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from ..errors import CheckpointError
from ..paths import file_sha256, save_safetensors
from ..version import __version__

STEP_DIR = re.compile(r"^step-(\d+)$")
CHECKSUMS = "checksums.json"
logger = logging.getLogger("medclip.train")


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Split ``optimizer.state_dict()`` into a flat tensor dict and a JSON-able remainder."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, slots in state["state"].items():
        for name, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"state.{index}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _rng_state() -> tuple[dict, dict]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss = random.getstate()
    return tensors, {"numpy": [kind, keys.tolist(), pos, has_gauss, cached], "python": [version, list(py_state), gauss]}


def save_checkpoint(run_dir: str | os.PathLike, step: int, model, optimizer, scheduler, scaler, state: dict,
                    keep_last_k: int = 2) -> Path:
    """Write ``<run_dir>/checkpoints/step-<step>`` atomically (with checksums) and prune old step checkpoints.

    Args:
        run_dir: the run folder.
        step: optimizer steps done.
        model: the (unwrapped) CLIP model.
        optimizer: the optimizer.
        scheduler: the lr scheduler (``state_dict`` must be JSON-able, as ``LambdaLR``'s is).
        scaler: the GradScaler (or None).
        state: JSON-able extras (epoch, batch position, metrics, recipe, ...).
        keep_last_k: step checkpoints to keep.

    Returns:
        The checkpoint folder.

    Raises:
        CheckpointError: the folder could not be written (disk full, permissions); the unfinished
            ``.tmp`` folder is removed and earlier checkpoints are untouched.
    """
    root = Path(run_dir) / "checkpoints"
    final, tmp = root / f"step-{step:06d}", root / f"step-{step:06d}.tmp"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        model.save_pretrained(str(tmp / "model"), extra={"step": step})
        opt_tensors, opt_rest = _optimizer_tensors(optimizer)
        rng_tensors, rng_rest = _rng_state()
        save_safetensors({**opt_tensors, **rng_tensors}, tmp / "optimizer.safetensors")
        sched = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
        meta = {"step": step, "medclip_version": __version__, "optimizer": opt_rest, "scheduler": sched,
                "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
                "rng": rng_rest, **state}
        with open(tmp / "state.json", "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1)
        (tmp / CHECKSUMS).write_text(json.dumps(_checksums(tmp), indent=1), encoding="utf-8")
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        previous = list_checkpoints(run_dir)
        raise CheckpointError(f"could not write checkpoint {final} ({exc.strerror or exc}); the unfinished folder "
                              f"was removed, the previous checkpoint {previous[-1] if previous else '(none)'} is "
                              f"intact: free space or fix permissions, then --resume") from None
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in list_checkpoints(run_dir)[:-keep_last_k]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _checksums(folder: Path) -> dict[str, str]:
    """SHA-256 of every file of a checkpoint folder (relative POSIX path → hex digest)."""
    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != CHECKSUMS):
        out[path.relative_to(folder).as_posix()] = file_sha256(path)
    return out


def verify_checkpoint(folder: str | os.PathLike) -> str | None:
    """Why a checkpoint folder cannot be trusted (missing file, unreadable ``state.json``, checksum
    mismatch), or None when it is complete and matches its ``checksums.json``."""
    from ..model import WEIGHTS_NAME

    folder = Path(folder)
    for name in ("state.json", "optimizer.safetensors", f"model/{WEIGHTS_NAME}"):
        if not (folder / name).is_file():
            return f"{name} is missing"
    try:
        meta = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"state.json is unreadable ({exc.__class__.__name__})"
    if not isinstance(meta, dict) or not {"step", "optimizer", "scheduler", "rng"} <= set(meta):
        return "state.json is not a checkpoint state"
    if not (folder / CHECKSUMS).is_file():
        return None  # written before checksums existed: the structural checks above are all we have
    try:
        want = json.loads((folder / CHECKSUMS).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return f"{CHECKSUMS} is unreadable"
    got = _checksums(folder)
    bad = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
    return f"checksum mismatch in {', '.join(bad)}" if bad else None


def load_newest_good(run_dir: str | os.PathLike, model, optimizer, scheduler, scaler) -> tuple[Path, dict] | None:
    """Restore the newest checkpoint that verifies and loads; corrupt newer ones are skipped with a warning.

    Returns:
        ``(folder, state.json dict)``, or None when the run has no usable checkpoint.
    """
    for folder in reversed(list_checkpoints(run_dir)):
        reason = verify_checkpoint(folder)
        if reason is None:
            try:
                return folder, load_checkpoint(folder, model, optimizer, scheduler, scaler)
            except (CheckpointError, ValueError, KeyError, TypeError, RuntimeError) as exc:
                reason = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        logger.warning("checkpoint %s is unusable (%s); skipping it for an older one", folder, reason)
    return None


def nonfinite_tensors(model) -> list[str]:
    """Names of parameters/buffers holding NaN or inf (never saved as a "good" model)."""
    return [name for name, t in model.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete step checkpoints of a run, oldest first (``.tmp`` leftovers are ignored)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def load_checkpoint(folder: str | os.PathLike, model, optimizer, scheduler, scaler) -> dict:
    """Restore model, optimizer, scheduler, scaler and RNG states in place; return ``state.json``'s dict.

    Raises:
        CheckpointError: when the folder is incomplete or does not match the model/optimizer.
    """
    from safetensors.torch import load_file

    from ..model import WEIGHTS_NAME, load_weights

    folder = Path(folder)
    for name in ("state.json", "optimizer.safetensors", f"model/{WEIGHTS_NAME}"):
        if not (folder / name).exists():
            raise CheckpointError(f"checkpoint {folder} is incomplete: {name} is missing; delete it to resume "
                                  f"from the previous one")
    meta = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    load_weights(model, str(folder / "model" / WEIGHTS_NAME), map_location="cpu")
    tensors = load_file(str(folder / "optimizer.safetensors"))
    opt_state: dict = {}
    for key, value in tensors.items():
        if key.startswith("state."):
            _, index, name = key.split(".", 2)
            opt_state.setdefault(int(index), {})[name] = value
    for key, value in meta["optimizer"]["scalars"].items():
        index, name = key.split(".", 1)
        opt_state.setdefault(int(index), {})[name] = value
    try:
        optimizer.load_state_dict({"state": opt_state, "param_groups": meta["optimizer"]["param_groups"]})
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"checkpoint {folder}: optimizer state does not match this model/recipe ({exc})") \
            from None
    _restore_schedule(meta["scheduler"], optimizer, scheduler)
    if scaler is not None and meta.get("scaler"):
        scaler.load_state_dict(meta["scaler"])
    torch.set_rng_state(tensors["rng.torch"])
    cuda_states = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)
    kind, keys, pos, has_gauss, cached = meta["rng"]["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, py_state, gauss = meta["rng"]["python"]
    random.setstate((version, tuple(py_state), gauss))
    return meta


def _restore_schedule(saved: dict, optimizer, scheduler) -> None:
    """The saved schedule position with the **current** peak lr (a resume may lower ``train.lr``)."""
    base_lrs = list(scheduler.base_lrs)
    scheduler.load_state_dict({**saved, "base_lrs": base_lrs, "lr_lambdas": [None] * len(optimizer.param_groups)})
    for group, base, factor in zip(optimizer.param_groups, base_lrs, scheduler.lr_lambdas):
        group["initial_lr"], group["lr"] = base, base * factor(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def save_model_atomic(model, folder: str | os.PathLike, extra: dict | None = None) -> Path:
    """``model.save_pretrained(folder)`` through a temporary folder and a rename (``best/``, ``model/``)."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(str(tmp), extra=extra)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"could not write {folder} ({exc.strerror or exc}); the unfinished folder was removed "
                              f"and {folder} is as before: free space or fix permissions") from None
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder
