"""The run folder: one run at a time, no silent reuse, and an explicit resume with a changed recipe.

* **Lock**: rank 0 holds ``<run>/run.lock`` (host, PID, start time) while it trains. A second run into the
  same folder is refused; a lock left by a process that is gone (SIGKILL, a crash) is taken over.
* **Used folder**: a folder with a run's outputs (checkpoints, ``model/``, ``metrics.csv``) is refused
  unless ``--resume`` (continue it) or ``--overwrite`` (delete those outputs first).
* **Changed recipe on resume**: the keys that differ from the run's ``recipe.yaml`` are listed; those in
  :data:`SAFE_ON_RESUME` are applied, any other is refused (start a new run folder for it).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
from pathlib import Path

import yaml

from ..errors import MedclipError

logger = logging.getLogger("medclip.train")

LOCK_NAME = "run.lock"
# outputs of a run, removed by --overwrite (nothing else in the folder is touched)
RUN_OUTPUTS = ("checkpoints", "model", "best", "metrics.csv", "tensorboard", "loss_curve.png", "demo_eval",
               "recipe.yaml")
# recipe keys a resumed run may change: the peak lr (what the divergence message tells users to lower), the
# time/step budgets, logging/validation/checkpoint frequency, loader workers and CPU threads
SAFE_ON_RESUME = ("train.lr", "train.max_minutes", "train.max_steps", "train.max_samples", "train.epochs",
                  "train.log_every", "train.eval_every", "train.eval_every_steps", "train.checkpoint_every",
                  "train.keep_last_k", "train.threads", "data.num_workers", "data.eval_batch_size")


class RunFolderError(MedclipError):
    """The run folder is in use, already holds a run, or cannot continue with the given recipe."""


class RunLock:
    """``<run>/run.lock`` held by this process; :meth:`release` removes it (only if still ours)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_NAME
        self.owner = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        self.held = False

    def acquire(self) -> RunLock:
        """Take the lock, or take over a stale one; raise :class:`RunFolderError` when a live run holds it."""
        tmp = self.path.with_name(f"{LOCK_NAME}.{os.getpid()}.tmp")
        for _ in range(2):
            # written whole, then hard-linked into place (atomic, fails if the lock exists): another process
            # never sees a half-written lock and mistakes it for the remains of a killed run
            tmp.write_text(json.dumps(self.owner), encoding="utf-8")
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            finally:
                tmp.unlink(missing_ok=True)
            self.held = True
            return self
        raise RunFolderError(f"{self.path.parent}: another run took the lock at the same moment; use another --output")

    def _take_over_if_stale(self) -> None:
        try:
            other = json.loads(self.path.read_text(encoding="utf-8"))
            host, pid = str(other["host"]), int(other["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            other, host, pid = {}, None, None  # unreadable: left half-written by a killed process
        if host is not None and host != self.owner["host"]:
            raise RunFolderError(f"{self.path.parent} is in use by PID {pid} on host {host} (since "
                                 f"{other.get('started', '?')}); use another --output, or delete {self.path} if "
                                 f"that run is gone")
        if pid is not None and _alive(pid):
            raise RunFolderError(f"{self.path.parent} is in use by a running medclip process (PID {pid}, since "
                                 f"{other.get('started', '?')}); wait for it to finish or use another --output")
        logger.warning("%s: taking over the lock of a run that is gone (PID %s)", self.path.parent, pid)
        self.path.unlink(missing_ok=True)

    def release(self) -> None:
        """Remove the lock file if this process still holds it."""
        if not self.held:
            return
        try:
            if json.loads(self.path.read_text(encoding="utf-8")).get("pid") == self.owner["pid"]:
                self.path.unlink()
        except (OSError, ValueError):
            pass
        self.held = False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return pid != os.getpid()  # our own PID: a lock this process left behind


def has_run(run_dir: Path) -> bool:
    """True when the folder holds outputs of a run (a checkpoint, a final model, a metrics log)."""
    run_dir = Path(run_dir)
    ckpts = run_dir / "checkpoints"
    return (ckpts.is_dir() and any(ckpts.iterdir())) or (run_dir / "model").exists() or \
        (run_dir / "metrics.csv").exists()


def prepare_run_dir(run_dir: Path, recipe, resume: bool, overwrite: bool) -> None:
    """Refuse a used folder without ``resume``/``overwrite``; clear it for ``overwrite``; check a resume's recipe.

    Raises:
        RunFolderError: a used folder without either flag, both flags, or unsafe recipe changes on resume.
    """
    if resume and overwrite:
        raise RunFolderError("--resume and --overwrite exclude each other: continue the run, or start it again")
    if not has_run(run_dir):
        return
    if overwrite:
        for name in RUN_OUTPUTS:
            path = run_dir / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        logger.info("--overwrite: removed the previous run's outputs from %s", run_dir)
        return
    if not resume:
        raise RunFolderError(f"{run_dir} already holds a run (checkpoints, model/ or metrics.csv): add --resume to "
                             f"continue it, --overwrite to start again there, or choose another --output")
    check_resume_recipe(run_dir, recipe)


def check_resume_recipe(run_dir: Path, recipe) -> dict[str, tuple]:
    """Compare ``recipe`` with the run's ``recipe.yaml``; log the changes; refuse unsafe ones.

    Returns:
        ``{key: (old, new)}`` of the changed keys (all in :data:`SAFE_ON_RESUME`).
    """
    from .config import recipe_from_dict

    saved = run_dir / "recipe.yaml"
    if not saved.is_file():
        return {}
    old = _flatten(recipe_from_dict(yaml.safe_load(saved.read_text(encoding="utf-8")), str(saved)).to_dict())
    new = _flatten(recipe.to_dict())
    changed = {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}
    unsafe = [k for k in changed if k not in SAFE_ON_RESUME]
    if unsafe:
        listed = "; ".join(f"{k}: {changed[k][0]!r} -> {changed[k][1]!r}" for k in unsafe[:4])
        raise RunFolderError(f"--resume with a changed recipe: {listed} cannot change in a resumed run (safe to "
                             f"change: {', '.join(SAFE_ON_RESUME)}); start a new --output for it")
    for key, (before, after) in changed.items():
        logger.info("resume: %s %r -> %r (applied)", key, before, after)
    return changed


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out
