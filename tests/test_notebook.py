"""The clinicians' notebook runs top to bottom headless (nbclient) on real X-rays and writes its figures."""

import json
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "notebooks", "evaluate_zero_shot.ipynb")


@pytest.fixture()
def kernel_name(tmp_path, monkeypatch):
    """A kernelspec for *this* interpreter in a private JUPYTER_PATH (works in a fresh CI venv)."""
    name = "medclip-test-python"
    spec = tmp_path / "jupyter" / "kernels" / name
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "medclip test", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return name


@pytest.fixture()
def model_dir(request, tmp_path_factory):
    """The tests' trained demo model when the suite provides one, else a seeded random tiny model."""
    for name in ("demo_model_dir", "demo_model"):
        try:
            return str(request.getfixturevalue(name))
        except pytest.FixtureLookupError:
            pass
    import torch

    import medclip

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("nb_model")
    medclip.create_model("tiny-vit").save_pretrained(str(folder))
    return str(folder)


@pytest.mark.slow
def test_notebook_runs_headless_and_writes_figures(kernel_name, model_dir, shared_data, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    out = tmp_path / "results"
    monkeypatch.setenv("MEDCLIP_MODEL_DIR", model_dir)
    monkeypatch.setenv("MEDCLIP_MANIFEST", str(shared_data / "pneumonia-kermany"))
    monkeypatch.setenv("MEDCLIP_CLASSES", os.path.join(REPO, "recipes", "classes", "pneumonia-kermany.yaml"))
    monkeypatch.setenv("MEDCLIP_OUTPUT", str(out))
    monkeypatch.setenv("MEDCLIP_MAX_IMAGES", "24")
    monkeypatch.setenv("MEDCLIP_BOOTSTRAP", "50")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert sum(c.cell_type == "markdown" for c in nb.cells) >= 6  # prose explains each number
    NotebookClient(nb, timeout=300, kernel_name=kernel_name,
                   resources={"metadata": {"path": os.path.join(REPO, "notebooks")}}).execute()
    for figure in ("roc.png", "reliability.png", "confusion.png", "examples.png"):
        assert (out / figure).stat().st_size > 1000, figure
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_images"] == 24 and metrics["n_positive"] == {"NORMAL": 6, "PNEUMONIA": 18}
    auroc = metrics["metrics"]["auroc/PNEUMONIA"]
    assert auroc["ci_low"] <= auroc["value"] <= auroc["ci_high"]
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    # the AUROC table is rendered in the notebook itself
    assert any("PNEUMONIA" in json.dumps(o.get("data", {})) for c in nb.cells for o in c.get("outputs", []))
