"""Shared test fixtures.

* ``shared_data``: ``../shared/data`` (or ``$MEDCLIP_SHARED_DATA``), the real files used by tests.
* ``tiny_model`` / ``tokenizer``: the tiny random ViT CLIP (seeded), built once per session;
  ``tiny_model_dir`` is that model saved as a folder. Use these instead of building another one.
* ``demo_corpus``: a small synthetic demo corpus; ``demo_run``: a short pretraining on it.
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


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_model, tmp_path_factory) -> Path:
    """``tiny_model`` saved as a model folder (``config.json`` + ``model.safetensors``), for CLI tests."""
    folder = tmp_path_factory.mktemp("tiny_model")
    tiny_model.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run faster on one intra-op thread than two on a shared CPU (no spin-waiting).

    Use per module with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory) -> Path:
    """Manifest of a small synthetic demo corpus (40 patients, 64 px; see medclip.data.demo)."""
    from medclip.data.demo import make_demo_corpus

    return Path(make_demo_corpus(tmp_path_factory.mktemp("demo_corpus"), n_patients=40, seed=0, image_size=64))


def demo_recipe_dict(manifest, **train) -> dict:
    """A tiny pretraining recipe on ``manifest`` (tiny-vit, batch 8, 1 thread); ``train`` overrides."""
    return {"model": "tiny-vit",
            "data": {"manifest": str(manifest), "sections": None, "eval_batch_size": 8, "augment": True,
                     "cache_dir": str(Path(manifest).parent / "cache")},
            "train": {"batch_size": 8, "epochs": 4, "lr": 2e-3, "warmup": 2, "log_every": 2, "eval_every": 2,
                      "threads": 1, **train}}


@pytest.fixture(scope="session")
def demo_run(demo_corpus, tmp_path_factory) -> Path:
    """Run folder of a short tiny-vit pretraining on ``demo_corpus``; the trained model is ``<run>/model``."""
    import torch

    from medclip.train.config import recipe_from_dict
    from medclip.train.loop import train

    run_dir = tmp_path_factory.mktemp("demo_run")
    threads = torch.get_num_threads()
    try:
        result = train(recipe_from_dict(demo_recipe_dict(demo_corpus)), str(run_dir))
    finally:
        torch.set_num_threads(threads)
    (run_dir / "result.json").write_text(__import__("json").dumps(result, default=float))
    return run_dir


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
