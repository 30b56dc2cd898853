"""Shared test fixtures.

* ``shared_data``: ``../shared/data`` (or ``$MEDCLIP_SHARED_DATA``), the real files used by tests.
* ``tiny_model`` / ``tokenizer``: the tiny random ViT CLIP (seeded), built once per session.
* In CI (``CI=true``) a skipped test fails the run unless it is marked ``gpu``: a skip there means
  something the project must provide (a package, a file) is missing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MEDCLIP_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Folder of the real data (chest X-rays, DICOM files, reports); skips when absent outside CI."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder not found: {SHARED_DATA} (set MEDCLIP_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tokenizer():
    import medclip

    return medclip.get_tokenizer("tiny-vit")


@pytest.fixture(scope="session")
def tiny_model():
    """A seeded tiny ViT CLIP in eval mode (do not train it in place; copy.deepcopy first)."""
    import torch

    import medclip

    torch.manual_seed(0)
    return medclip.create_model("tiny-vit").eval()


_skipped_in_ci: list[str] = []


def pytest_runtest_logreport(report):
    if report.skipped and os.environ.get("CI") and "gpu" not in report.keywords:
        _skipped_in_ci.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    if _skipped_in_ci and exitstatus == 0:
        print(f"\nCI: {len(_skipped_in_ci)} test(s) skipped without the gpu mark count as failures:")
        for nodeid in _skipped_in_ci:
            print(f"  {nodeid}")
        session.exitstatus = 1
