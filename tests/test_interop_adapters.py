"""Every converted zoo model (tiny replicas: BiomedCLIP layout, SigLIP, UniMed-CLIP, PMC-CLIP, MedCLIP-ResNet,
MedCLIP-ViT) works downstream: zero-shot and all five adapters fit, predict and reload; ``medclip zeroshot`` and
``medclip retrieve`` run on the converted folder, as do the notebook's code cells; LoRA's default targets per tower
kind."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import medclip_adapters as ma
import numpy as np
import pandas as pd
import pytest

from medclip.cli import main

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from test_adapters import CASES, make_task, write_images  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    """train / val / test frames of 16 two-class images (as tests/test_adapters.py)."""
    paths = write_images(tmp_path_factory.mktemp("images"), 16)
    df = pd.DataFrame({"image": paths, "label": np.arange(16) % 2, "patient_id": [f"p{i}" for i in range(16)]})
    return {"train": df.iloc[:8].reset_index(drop=True), "val": df.iloc[8:12].reset_index(drop=True),
            "test": df.iloc[12:].reset_index(drop=True)}


def _unimed(tmp):
    import torch
    from reference.unimed_clip import UniMedCLIPReference
    from test_interop_zoo import _tiny_bert, randomise

    _tiny_bert(tmp / "bert")
    reference = randomise(UniMedCLIPReference(str(tmp / "bert")), seed=8)
    torch.save({"state_dict": reference.state_dict()}, tmp / "unimed.pt")
    return tmp / "unimed.pt", ["--text-model", str(tmp / "bert")]


def _medclip_resnet(tmp):
    import torch
    from reference.medclip import MedCLIPReference
    from test_interop_medclip import _bert
    from test_interop_zoo import randomise

    reference = randomise(MedCLIPReference(_bert(tmp / "bert")), seed=7)
    (tmp / "m").mkdir()
    torch.save(reference.state_dict(), tmp / "m" / "pytorch_model.bin")
    return tmp / "m", ["--from", "medclip-resnet", "--text-model", str(tmp / "bert")]


def _pmc_clip(tmp):
    """PMC-CLIP's training-checkpoint layout (``module.`` keys; the main published one); RN50 depths, width 16."""
    import torch
    from reference.pmc_clip import PMCCLIPReference
    from test_interop_zoo import _tiny_bert, randomise
    from transformers import BertConfig

    _tiny_bert(tmp / "pubmedbert")
    torch.manual_seed(0)
    reference = randomise(PMCCLIPReference(BertConfig.from_pretrained(tmp / "pubmedbert")), seed=6)
    torch.save(reference.published_state(), tmp / "checkpoint.pt")
    return tmp / "checkpoint.pt", ["--text-model", str(tmp / "pubmedbert")]


def _medclip_vit(tmp):
    """MedCLIP-ViT's ``pytorch_model.bin``: an HF Swin (2 stages, width 16) + Bio_ClinicalBERT-style BERT."""
    import torch
    from reference.medclip import MedCLIPViTReference
    from test_interop_medclip import _bert
    from test_interop_zoo import randomise
    from transformers import SwinConfig

    swin = SwinConfig(image_size=224, patch_size=4, embed_dim=16, depths=[1, 2], num_heads=[1, 2], window_size=7,
                      mlp_ratio=2.0)
    torch.manual_seed(0)
    reference = randomise(MedCLIPViTReference(_bert(tmp / "bert"), swin), seed=9)
    (tmp / "m").mkdir()
    torch.save(reference.state_dict(), tmp / "m" / "pytorch_model.bin")
    return tmp / "m", ["--from", "medclip-vit", "--text-model", str(tmp / "bert")]


REPLICAS = {"unimed-clip": _unimed, "pmc-clip": _pmc_clip, "medclip-resnet": _medclip_resnet,
            "medclip-vit": _medclip_vit}


@pytest.fixture(scope="module", params=["biomedclip", "siglip", *REPLICAS])
def converted(request, tmp_path_factory):
    import medclip

    tmp = tmp_path_factory.mktemp(request.param)
    extra = []
    if request.param == "biomedclip":
        from test_interop_zoo import _biomedclip_replica

        source = _biomedclip_replica(tmp)[0]
    elif request.param == "siglip":
        from test_interop_siglip import _siglip_folder

        source = _siglip_folder(tmp)[0]
    else:
        source, extra = REPLICAS[request.param](tmp)
    assert main(["convert", str(source), *extra, "--output", str(tmp / "model")]) == 0
    return tmp / "model", medclip.from_pretrained(str(tmp / "model")).eval()


@pytest.mark.parametrize("name", sorted(CASES))
def test_adapters_on_converted_models(converted, name, frames, tmp_path):
    _, model = converted
    task = make_task("single")
    method = ma.create_method(name, model, task, cache=ma.FeatureCache(), seed=3, **CASES[name])
    method.fit(frames["train"], frames["val"])
    probs = method.predict_proba(frames["test"])
    assert probs.shape == (len(frames["test"]), 2) and np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)
    method.save(str(tmp_path / "adapter"))
    reloaded = ma.load_method(str(tmp_path / "adapter"), model, cache=ma.FeatureCache())
    np.testing.assert_allclose(reloaded.predict_proba(frames["test"]), probs, atol=1e-6)


def test_cli_zeroshot_on_converted_models(converted, frames, tmp_path):
    """``medclip zeroshot`` (multi-label: SigLIP's sigmoid with its bias) on the converted folder gives the same
    probabilities as the adapters' zero-shot method on the loaded model."""
    folder, model = converted
    table = pd.concat([frames["train"], frames["test"]]).assign(effusion=lambda d: d["label"].astype(str))
    table["cardiomegaly"] = (np.arange(len(table)) // 2 % 2).astype(str)
    table[["image", "patient_id", "effusion", "cardiomegaly"]].to_csv(tmp_path / "m.csv", index=False)
    from medclip.eval.prompts import parse_class_file

    classes = {"task": "multi", "templates": ["{}"],
               "classes": {"effusion": ["small left pleural effusion"], "cardiomegaly": ["the heart is enlarged"]}}
    (tmp_path / "c.json").write_text(json.dumps(classes))
    assert main(["zeroshot", "--model", str(folder), "--manifest", str(tmp_path / "m.csv"), "--classes",
                 str(tmp_path / "c.json"), "--output", str(tmp_path / "out"), "--bootstrap", "20", "--no-cache",
                 "--no-figures"]) == 0
    out = pd.read_csv(tmp_path / "out" / "probabilities.csv")
    task = ma.Task.from_class_file(parse_class_file(classes))
    ours = ma.create_method("zeroshot", model, task, cache=ma.FeatureCache()).predict_proba(table)
    assert list(out["image"]) == list(table["image"])
    assert out[["logit/effusion", "logit/cardiomegaly"]].std().min() > 1e-3  # images score differently
    np.testing.assert_allclose(out[["prob/effusion", "prob/cardiomegaly"]].to_numpy(), ours, atol=1e-5)


def test_notebook_cells_on_converted_models(converted, tmp_path, monkeypatch):
    """The clinicians' notebook's code cells, run in order in this process (tests/test_notebook.py runs it through
    a kernel on real X-rays), on each converted folder and a two-class folder tree."""
    import nbformat

    folder, _ = converted
    for i, name in enumerate(("NORMAL", "PNEUMONIA")):
        write_images(tmp_path / "tree" / name, 8, seed=i)
    env = {"MODEL_DIR": str(folder), "MANIFEST": str(tmp_path / "tree"), "OUTPUT": str(tmp_path / "out"),
           "CLASSES": str(HERE.parent / "recipes" / "classes" / "pneumonia-kermany.yaml"), "MAX_IMAGES": "0",
           "BOOTSTRAP": "20"}
    for key, value in env.items():
        monkeypatch.setenv(f"MEDCLIP_{key}", value)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    namespace = {}
    for cell in nbformat.read(HERE.parent / "notebooks" / "evaluate_zero_shot.ipynb", as_version=4).cells:
        if cell.cell_type == "code":
            exec(compile(cell.source, "notebook", "exec"), namespace)  # noqa: S102 - the repository's own notebook
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["n_images"] == 16 and metrics["n_positive"] == {"NORMAL": 8, "PNEUMONIA": 8}
    for figure in ("roc.png", "reliability.png", "confusion.png", "examples.png"):
        assert (tmp_path / "out" / figure).stat().st_size > 1000, figure


# image tower kind of each converted model -> what LoRA's default (encoder: auto) adapts on the image side
IMAGE_KINDS = {"biomedclip": "vit", "siglip": "vit", "unimed-clip": "vit", "pmc-clip": "cnn",
               "medclip-resnet": "cnn", "medclip-vit": "swin"}


def test_lora_targets_on_converted_models(converted, request):
    """LoRA's default targets on each tower kind: every attention q/k/v of the HF text tower (BERT ``query,key,
    value``; SigLIP ``q_proj,k_proj,v_proj``), a timm ViT's fused ``qkv``, a Swin's ``q_proj,k_proj,v_proj``, none
    in a CNN (PMC-CLIP's ModifiedResNet, MedCLIP's ResNet-50)."""
    import re

    from medclip_adapters.lora import lora_target_regex, tower_kinds

    _, model = converted
    kind = IMAGE_KINDS[request.node.callspec.params["converted"]]
    regex, adapts_vision = lora_target_regex(model, "auto")
    hit = [name for name, _ in model.named_modules() if re.fullmatch(regex, name)]
    text, image = [n for n in hit if n.startswith("text.")], [n for n in hit if n.startswith("visual.")]
    assert tower_kinds(model) == ("hf", kind) and adapts_vision == (kind != "cnn")
    assert len(text) == 3 * model.text.model.config.num_hidden_layers
    assert {n.rsplit(".", 1)[-1] for n in text} in ({"query", "key", "value"}, {"q_proj", "k_proj", "v_proj"})
    assert {n.rsplit(".", 1)[-1] for n in image} == {"swin": {"q_proj", "k_proj", "v_proj"}, "vit": {"qkv"},
                                                     "cnn": set()}[kind]
    if kind == "swin":
        assert len(image) == 3 * sum(model.config.vision.hf_config["depths"])


def test_retrieve_on_converted_models(converted, frames, tmp_path, monkeypatch):
    import torch

    from medclip.eval.retrieval import evaluate_retrieval

    folder, model = converted
    table = pd.concat([frames["train"], frames["val"]])
    reports = ["small left pleural effusion", "the heart is enlarged", "no acute process", "right lower lobe opacity"]
    table = table.assign(report=[reports[i % 4] for i in range(len(table))])
    table[["image", "report", "patient_id"]].to_csv(tmp_path / "m.csv", index=False)
    assert main(["retrieve", "--model", str(folder), "--manifest", str(tmp_path / "m.csv"),
                 "--output", str(tmp_path / "out")]) == 0
    metrics = json.loads((tmp_path / "out" / "retrieval.json").read_text())
    assert metrics["n"] == len(table) and 0 <= metrics["i2t_R@1"] <= 1
    grad_enabled, encode_text = [], model.encode_text  # reports are encoded without autograd (no graph kept)
    monkeypatch.setattr(model, "encode_text", lambda *a, **k: grad_enabled.append(torch.is_grad_enabled())
                        or encode_text(*a, **k))
    evaluate_retrieval(model, str(tmp_path / "m.csv"), progress=False)
    assert grad_enabled and not any(grad_enabled)
