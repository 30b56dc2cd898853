"""The benchmark scripts: a missing dependency or script is an error; the GPU script parses and runs on CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))


def test_loss_memory_needs_open_clip(monkeypatch):
    import loss_memory

    assert loss_memory._dense_fn()[0] == "open_clip.ClipLoss"
    monkeypatch.setitem(sys.modules, "open_clip", None)  # as if open_clip were not installed
    monkeypatch.setitem(sys.modules, "open_clip.loss", None)
    with pytest.raises(ImportError):
        loss_memory._dense_fn()


def test_iu_xray_reader_is_medclips(monkeypatch):
    import common

    monkeypatch.setitem(sys.modules, "medclip.data.reports", None)
    with pytest.raises(ImportError):
        common.iu_xray_texts("impression")


def test_run_all_refuses_a_missing_script(monkeypatch, tmp_path):
    import run_all

    monkeypatch.setattr(run_all, "SCRIPTS", run_all.SCRIPTS + (("no_such_bench.py", False, "missing"),))
    with pytest.raises(SystemExit, match="no_such_bench.py"):
        run_all.main(["--only", "no_such_bench.py", "--output", str(tmp_path / "r.md")])


@pytest.mark.slow
@pytest.mark.slow  # a subprocess building four tiny models and a demo corpus (~10 s of CPU)
def test_gpu_script_parses_and_its_python_part_runs_on_cpu(tmp_path):
    syntax = subprocess.run(["bash", "-n", str(BENCH / "gpu.sh")], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
    cmd = [sys.executable, str(BENCH / "gpu_bench.py"), "--device", "cpu", "--tiny", "--cap", "0.5",
           "--work", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    table = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    sections = [line.split(" | ")[0] for line in table[1:]]
    assert "FAILED" not in proc.stdout
    assert any("train tiny-vit" in s for s in sections) and any("train tiny-rn" in s for s in sections)
    assert sum("loss N=" in s for s in sections) == 3
    assert any("zero-shot" in s for s in sections) and any("loader" in s for s in sections)
    medclip_rows = [line for line in table if "| medclip |" in line and "train" in line]
    assert all("pairs/s" in line and "MFU" in line for line in medclip_rows) and len(medclip_rows) == 2
