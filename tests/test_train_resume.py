"""Kill -9 mid-run and ``--resume``: the final parameters equal an uninterrupted run bit for bit (CPU).

Two real ``python -m medclip pretrain`` processes start together on the tiny demo recipe: one trains
straight to the end, the other is killed with SIGKILL as soon as a mid-epoch checkpoint exists, then
resumed with ``--resume``. Every tensor of the final models must be ``torch.equal`` and the metrics CSV of
the resumed run must be the straight run's, row for row (no gap, no repeated step).
"""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import demo_recipe_dict
from safetensors.torch import load_file

# 30 training pairs of the demo corpus fixture / batch 6 = 5 steps per epoch; 4 epochs = 20 steps. Step
# checkpoints every 4 steps (plus one at each epoch end), so the kill lands after step 8 = the 3rd batch of
# epoch 2: the resume must restore the data position inside an epoch, the augmentation draws (made in
# DataLoader workers), the optimizer and the schedule.
EPOCHS, STEPS_PER_EPOCH, KILL_AFTER = 4, 5, 8


def _cmd(recipe: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "medclip", "pretrain", "--recipe", str(recipe), "--output", str(out), *extra]


def _newest_step(run: Path) -> int:
    names = [p.name for p in (run / "checkpoints").glob("step-*")]
    steps = [int(m.group(1)) for name in names if (m := re.fullmatch(r"step-(\d+)", name))]
    return max(steps, default=-1)


def _rows(run: Path) -> list[list[str]]:
    with open(run / "metrics.csv", newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


@pytest.mark.slow
@pytest.mark.timeout(900)  # two training processes; minutes on a busy 2-core machine
def test_kill_and_resume_is_bit_identical(demo_corpus, tmp_path):
    spec = demo_recipe_dict(demo_corpus, batch_size=6, epochs=EPOCHS, checkpoint_every=4, keep_last_k=2, log_every=1,
                            eval_every=2, warmup=3)
    spec["data"]["num_workers"] = 1  # augmentation happens in a worker process, ahead of the training step
    kill_and_resume(spec, tmp_path, KILL_AFTER, EPOCHS * STEPS_PER_EPOCH)


def kill_and_resume(spec: dict, tmp_path: Path, kill_after: int, total: int) -> None:
    """Run ``spec`` straight and killed (SIGKILL after checkpoint ``kill_after``) + ``--resume``; assert both end
    bit-identical with the same metrics rows (also used by the shard data source's test)."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(spec))
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    pipe = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, "env": env}
    a = subprocess.Popen(_cmd(recipe, straight), **pipe)
    b = subprocess.Popen(_cmd(recipe, killed), **pipe)
    try:
        deadline = time.monotonic() + 240
        while _newest_step(killed) < kill_after and b.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        b.send_signal(signal.SIGKILL)
        _, b_err = b.communicate(timeout=60)
        a_out, a_err = a.communicate(timeout=240)
    finally:
        for p in (a, b):
            if p.poll() is None:
                p.kill()
    assert b.returncode == -signal.SIGKILL, f"run was not killed mid-way (exit {b.returncode}): {b_err[-2000:]}"
    assert a.returncode == 0, a_err[-3000:]
    assert not (killed / "model").exists()
    resumed_from = _newest_step(killed)
    assert kill_after <= resumed_from < total

    c = subprocess.run(_cmd(recipe, killed, "--resume"), capture_output=True, text=True, env=env, timeout=240)
    assert c.returncode == 0, c.stderr[-3000:]
    assert f"(step {resumed_from}, lr " in c.stderr and f"trained {total} steps" in c.stdout

    want = load_file(str(straight / "model" / "model.safetensors"))
    got = load_file(str(killed / "model" / "model.safetensors"))
    assert want.keys() == got.keys() and len(want) > 10
    differing = [k for k in want if not torch.equal(want[k], got[k])]
    assert not differing, f"{len(differing)} tensors differ after resume, e.g. {differing[:3]}"

    # metrics.csv: every step once, in order, and the same numbers as the straight run
    rows, reference = _rows(killed), _rows(straight)
    train_steps = [int(r[0]) for r in rows[1:] if r[2]]
    assert train_steps == list(range(1, total + 1))
    assert rows == reference
