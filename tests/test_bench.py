"""The benchmark scripts fail loudly on a missing dependency or script (never benchmark something else)."""

from __future__ import annotations

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
