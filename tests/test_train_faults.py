"""Run folders and checkpoints under faults: corrupt checkpoints, disk full, concurrent runs, NaN weights,
resume with a changed recipe, file modes. (Kill -9 during a checkpoint write: tests/test_train_resume.py.)"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from conftest import demo_recipe_dict
from safetensors.torch import load_file

from medclip.cli import main as cli_main
from medclip.errors import CheckpointError
from medclip.train.build import build_model
from medclip.train.checkpoint import list_checkpoints, load_newest_good, save_checkpoint, verify_checkpoint
from medclip.train.config import recipe_from_dict
from medclip.train.distributed import DistInfo
from medclip.train.loop import TrainingDiverged, train
from medclip.train.optim import build_optimizer, build_scheduler, cosine_lambda
from medclip.train.rundir import LOCK_NAME, RunFolderError

# 30 training pairs of the demo corpus fixture / batch 6 = 5 steps per epoch; the shared run stops at step 4
# (--max-steps) with checkpoints at steps 2 and 4.
SPEC = {"batch_size": 6, "epochs": 1, "checkpoint_every": 2, "keep_last_k": 3, "eval_every": 0, "log_every": 1}


def _recipe(demo_corpus, **train_overrides):
    return recipe_from_dict(demo_recipe_dict(demo_corpus, **{**SPEC, **train_overrides}))


@pytest.fixture(scope="module")
def short_run(demo_corpus, tmp_path_factory) -> Path:
    assert len(pd.read_csv(demo_corpus).query("split == 'train'")) // SPEC["batch_size"] == 5
    run = tmp_path_factory.mktemp("faults") / "run"
    result = train(_recipe(demo_corpus), str(run), max_steps=4)
    assert result["step"] == 4 and result["planned_steps"] == 5 and result["stopped_by"] == "steps"
    return run


@pytest.fixture()
def run_copy(short_run, tmp_path) -> Path:
    return Path(shutil.copytree(short_run, tmp_path / "run"))


def _parts(recipe):
    _, core = build_model(recipe, DistInfo())
    optimizer = build_optimizer(core, recipe.train)
    return core, optimizer, build_scheduler(optimizer, recipe.train.warmup, 5), None


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) - 100] ^= 0x01  # inside the tensor data: the file still parses
    path.write_bytes(bytes(data))


CORRUPTIONS = {
    "truncated weights": lambda c: _truncate(c / "model" / "model.safetensors"),
    "missing state.json": lambda c: (c / "state.json").unlink(),
    "garbage state.json": lambda c: (c / "state.json").write_text("{not json"),
    "bit flip in the optimizer state": lambda c: _flip_bit(c / "optimizer.safetensors"),
    "bit flip in the weights": lambda c: _flip_bit(c / "model" / "model.safetensors"),
}


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_corrupt_newest_checkpoint_falls_back_to_the_previous(run_copy, demo_corpus, kind, caplog):
    newest, previous = list_checkpoints(run_copy)[-1], list_checkpoints(run_copy)[-2]
    assert verify_checkpoint(newest) is None
    CORRUPTIONS[kind](newest)
    assert verify_checkpoint(newest) is not None
    folder, meta = load_newest_good(run_copy, *_parts(_recipe(demo_corpus)))
    assert folder == previous and meta["step"] == 2
    assert f"checkpoint {newest} is unusable" in caplog.text


@pytest.mark.slow
def test_resume_after_a_truncated_checkpoint_continues_from_the_good_one(run_copy, demo_corpus, caplog):
    caplog.set_level(logging.INFO, logger="medclip")
    _truncate(list_checkpoints(run_copy)[-1] / "model" / "model.safetensors")
    result = train(_recipe(demo_corpus), str(run_copy), resume=True)
    assert result["step"] == 5 and "resumed from" in caplog.text and "step-000002 (step 2" in caplog.text
    rows = [row.split(",") for row in (run_copy / "metrics.csv").read_text().splitlines()[1:]]
    steps = [int(row[0]) for row in rows if row[2]]
    assert steps == [1, 2, 3, 4, 5]  # rows after the good checkpoint were dropped and logged again


def test_disk_full_while_checkpointing_is_a_clean_error(run_copy, demo_corpus, monkeypatch):
    recipe = _recipe(demo_corpus)
    core, optimizer, scheduler, scaler = parts = _parts(recipe)
    load_newest_good(run_copy, *parts)
    before = list_checkpoints(run_copy)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("medclip.paths.save_safetensors", full)  # the model weights inside the checkpoint
    with pytest.raises(CheckpointError) as info:
        save_checkpoint(run_copy, 5, core, optimizer, scheduler, scaler, {})
    message = str(info.value)
    assert "No space left on device" in message and str(before[-1]) in message and "\n" not in message
    assert list_checkpoints(run_copy) == before and not list((run_copy / "checkpoints").glob("*.tmp"))
    assert all(verify_checkpoint(c) is None for c in before)


def test_disk_full_in_the_cli_is_one_line(demo_corpus, tmp_path, monkeypatch, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(demo_recipe_dict(demo_corpus, **SPEC)))

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("medclip.train.checkpoint.save_safetensors", full)
    assert cli_main(["pretrain", "--recipe", str(recipe), "--output", str(tmp_path / "run"), "--max-steps", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("medclip pretrain: error: could not write checkpoint") and "No space left" in err[-1]
    assert "Traceback" not in "\n".join(err) and not list((tmp_path / "run" / "checkpoints").glob("*"))
    assert not (tmp_path / "run" / LOCK_NAME).exists()


def test_nan_weights_on_a_checkpoint_step_save_nothing_broken(demo_corpus, tmp_path, monkeypatch):
    import medclip.train.loop as loop

    real_step = loop.optimizer_step

    def poisoned(model, optimizer, scheduler, scaler, clip_grad):
        real_step(model, optimizer, scheduler, scaler, clip_grad)
        if scheduler.last_epoch == 4:  # a checkpoint step (checkpoint_every=2): the loss was still finite
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))

    monkeypatch.setattr(loop, "optimizer_step", poisoned)
    with pytest.raises(TrainingDiverged, match="non-finite by step 4.*step-000002"):
        train(_recipe(demo_corpus, eval_every=1), str(tmp_path))
    assert [c.name for c in list_checkpoints(tmp_path)] == ["step-000002"]
    assert not (tmp_path / "model").exists() and not (tmp_path / "best").exists()
    weights = load_file(str(tmp_path / "checkpoints" / "step-000002" / "model" / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())


@pytest.mark.slow
def test_used_folder_needs_resume_or_overwrite(run_copy, demo_corpus):
    with pytest.raises(RunFolderError, match="already holds a run.*--resume.*--overwrite"):
        train(_recipe(demo_corpus), str(run_copy))
    with pytest.raises(RunFolderError, match="train.seed: 0 -> 1 cannot change"):
        train(_recipe(demo_corpus, seed=1), str(run_copy), resume=True)
    result = train(_recipe(demo_corpus), str(run_copy), max_steps=1, overwrite=True)
    assert result["step"] == 1 and [c.name for c in list_checkpoints(run_copy)] == ["step-000001"]


def test_resume_applies_a_lower_learning_rate(run_copy, demo_corpus, caplog, monkeypatch):
    import medclip.train.loop as loop

    used, real_step = [], loop.optimizer_step

    def recording(model, optimizer, *args):
        used.append(optimizer.param_groups[0]["lr"])
        real_step(model, optimizer, *args)

    monkeypatch.setattr(loop, "optimizer_step", recording)
    caplog.set_level(logging.INFO, logger="medclip")
    assert train(_recipe(demo_corpus, lr=1e-4), str(run_copy), resume=True)["step"] == 5
    factor = cosine_lambda(2, 5)(4)  # step 5 of 5, warm-up 2: a quarter of the peak
    assert used == [pytest.approx(1e-4 * factor)] and factor == pytest.approx(0.25)
    assert "resume: train.lr 0.002 -> 0.0001 (applied)" in caplog.text


def _lock_written(path) -> bool:
    try:
        return "pid" in json.loads(path.read_text())
    except (OSError, ValueError):
        return False


@pytest.mark.slow
def test_concurrent_run_is_refused_and_a_killed_runs_lock_is_taken_over(run_copy, demo_corpus, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(demo_recipe_dict(demo_corpus, **{**SPEC, "epochs": 50})))
    other = tmp_path / "other"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, "-m", "medclip", "pretrain", "--recipe", str(recipe), "--output",
                              str(other)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not _lock_written(other / LOCK_NAME) and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)  # the lock file is created first, then its host + PID written
        assert json.loads((other / LOCK_NAME).read_text())["pid"] == first.pid
        with pytest.raises(RunFolderError, match=f"in use by a running medclip process \\(PID {first.pid}"):
            train(_recipe(demo_corpus), str(other), resume=True)
    finally:
        first.kill()
        first.communicate(timeout=60)
    assert (other / LOCK_NAME).exists()  # SIGKILL leaves the lock behind ...
    (run_copy / LOCK_NAME).write_text((other / LOCK_NAME).read_text())
    assert train(_recipe(demo_corpus), str(run_copy), resume=True)["step"] == 5  # ... and a new run takes it over
    assert not (run_copy / LOCK_NAME).exists()


def test_saved_weights_follow_the_umask(short_run):
    mask = os.umask(0)
    os.umask(mask)
    for path in [short_run / "model" / "model.safetensors", *short_run.glob("checkpoints/*/optimizer.safetensors")]:
        assert path.stat().st_mode & 0o777 == 0o666 & ~mask, path
    assert (short_run / "metrics.csv").stat().st_mode & 0o777 == 0o666 & ~mask


@pytest.mark.slow
def test_a_budget_stop_says_so_and_gives_the_resume_command(demo_corpus, tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(demo_recipe_dict(demo_corpus, **SPEC)))
    run = tmp_path / "run"
    argv = ["pretrain", "--recipe", str(recipe), "--output", str(run), "--set", "train.log_every=1"]
    assert cli_main([*argv, "--max-steps", "3"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    note = next(i for i, line in enumerate(lines) if line.startswith("stopped by"))
    assert lines[note].startswith("stopped by --max-steps 3 after 3 of 5 planned steps (lr ")
    assert "step 3/3 loss" in captured.err and "s/step ETA 0:00:00" in captured.err  # progress: time per step, ETA
    resume = lines[note + 1].split()
    assert resume[:2] == ["medclip", "pretrain"] and resume[-1] == "--resume" and "--set=train.log_every=1" in resume
    assert cli_main(resume[1:]) == 0  # the printed command continues the run to its planned end
    out = capsys.readouterr().out
    assert "trained 5 steps" in out and "stopped by" not in out
