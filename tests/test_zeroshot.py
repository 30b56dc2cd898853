"""Zero-shot classification: prompt-ensemble math, multi-label pos/neg probabilities, class files,
the prompt cache, folder/manifest labels and the ``medclip zeroshot`` command end to end."""

import json
import os

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from medclip.errors import ConfigError
from medclip.eval import prompts as P
from medclip.eval.zeroshot import ZeroShotClassifier, run_zeroshot

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERMANY_3 = os.path.join(REPO, "recipes", "classes", "pneumonia-kermany-3class.yaml")


def _one_by_one(model, tokenizer, texts):
    with torch.no_grad():
        return torch.cat([model.encode_text(tokenizer([t])) for t in texts])


def test_prompt_ensemble_is_mean_of_normalised_then_renormalised(tiny_model, tokenizer):
    cf = P.parse_class_file({"templates": ["{}", "a chest x-ray showing {}"], "classes": {
        "normal": ["clear lungs", "no acute cardiopulmonary process at all today"],
        "effusion": {"prompts": ["pleural effusion"], "templates": ["{} is present"]}}})
    pos, neg = P.class_embeddings(tiny_model, cf, tokenizer)
    assert neg is None and pos.shape == (2, tiny_model.config.embed_dim)
    texts = P.positive_texts(cf, "normal")
    long = "no acute cardiopulmonary process at all today"
    assert texts == ["clear lungs", "a chest x-ray showing clear lungs", long, f"a chest x-ray showing {long}"]
    emb = _one_by_one(tiny_model, tokenizer, texts)  # each encoded alone at its own length
    expected = F.normalize(F.normalize(emb, dim=-1).mean(0), dim=-1)
    torch.testing.assert_close(pos[0], expected, atol=1e-5, rtol=1e-5)
    single = _one_by_one(tiny_model, tokenizer, ["pleural effusion is present"])[0]
    torch.testing.assert_close(pos[1], F.normalize(single, dim=-1), atol=1e-5, rtol=1e-5)
    # batched, length-sorted encoding returns rows in input order and equals one-by-one encoding
    mixed = ["a", "a much longer prompt about the right lower lobe", "opacity"]
    torch.testing.assert_close(P.encode_texts(tiny_model, tokenizer, mixed, batch_size=2),
                               _one_by_one(tiny_model, tokenizer, mixed), atol=1e-5, rtol=1e-5)


def test_multilabel_probability_is_softmax_over_positive_and_negative(tiny_model, tokenizer):
    cf = P.parse_class_file({"task": "multi", "negative_templates": ["no {}"], "classes": {
        "effusion": ["pleural effusion"],
        "cardiomegaly": {"prompts": ["enlarged heart"], "negatives": ["normal heart size"]},
        "No Finding": {"prompts": ["no acute disease"], "no_finding": True}}})
    clf = ZeroShotClassifier(tiny_model, cf, tokenizer)
    torch.manual_seed(1)
    feats = F.normalize(torch.randn(5, tiny_model.config.embed_dim), dim=-1)
    probs = clf.predict_proba(feats)
    s = float(tiny_model.get_logit_scale().detach())
    enc = lambda t: F.normalize(_one_by_one(tiny_model, tokenizer, t), dim=-1)  # noqa: E731
    pairs = {"effusion": (enc(["pleural effusion"])[0], enc(["no pleural effusion"])[0]),
             "cardiomegaly": (enc(["enlarged heart"])[0], enc(["normal heart size"])[0])}
    # no_finding is contrasted with the ensemble of the other conditions' positive prompts
    pairs["No Finding"] = (enc(["no acute disease"])[0], P.ensemble(enc(["pleural effusion", "enlarged heart"])))
    for c, name in enumerate(cf.names):
        pos, neg = pairs[name]
        pair_logits = torch.stack([s * feats @ pos, s * feats @ neg], 1)
        expected = pair_logits.softmax(1)[:, 0]
        np.testing.assert_allclose(probs[:, c], expected.numpy(), atol=1e-5)
    assert P.negative_texts(cf, "No Finding") == []  # never "no no acute disease"


@pytest.mark.parametrize("bad, match", [
    ({"classes": {"a": ["x"], "b": ["y"]}, "templatez": ["{}"]}, "unknown config key 'templatez'"),
    ({"classes": {"a": {"prompts": ["x"], "prompt": "y"}, "b": ["y"]}}, "unknown config key 'classes.a.prompt'"),
    ({"classes": {"a": ["x"], "b": ["y"]}, "templates": ["no placeholder"]}, "exactly one"),
    ({"classes": {"a": ["x"]}}, "at least 2 classes"),
    ({"classes": {"a": [""], "b": ["y"]}}, "non-empty strings"),
    ({"task": "multilabel", "classes": {"a": ["x"]}}, "task must be one of"),
    ({"classes": {"a": {"prompts": ["x"], "negatives": ["y"]}, "b": ["y"]}}, "only apply to task: multi"),
    ({"classes": []}, "non-empty mapping"),
])
def test_class_file_is_validated_strictly(bad, match):
    with pytest.raises(ConfigError, match=match) as info:
        P.parse_class_file(bad, "my.yaml")
    assert "\n" not in str(info.value) and "my.yaml" in str(info.value)


def test_shipped_class_files_load():
    folder = os.path.join(REPO, "recipes", "classes")
    names = sorted(os.listdir(folder))
    assert {"pneumonia-kermany.yaml", "pneumonia-kermany-3class.yaml", "rare-conditions.yaml",
            "demo-findings.yaml"} <= set(names)
    for name in names:
        cf = P.load_class_file(os.path.join(folder, name))
        assert all(P.positive_texts(cf, n) for n in cf.names)
    rare = P.load_class_file(os.path.join(folder, "rare-conditions.yaml"))
    assert rare.task == "multi" and {"pneumomediastinum", "Kerley B lines", "pneumatosis"} <= set(rare.names)


def test_prompt_cache_hits_and_misses(tiny_model, tokenizer, tmp_path, monkeypatch):
    cf = P.load_class_file(KERMANY_3)
    first = P.class_embeddings(tiny_model, cf, tokenizer, cache_dir=str(tmp_path))[0]
    assert len(list(tmp_path.glob("*.safetensors"))) == 1

    def boom(*a, **k):
        raise AssertionError("prompts were re-encoded despite the cache")

    monkeypatch.setattr(P, "encode_texts", boom)
    torch.testing.assert_close(P.class_embeddings(tiny_model, cf, tokenizer, cache_dir=str(tmp_path))[0], first)
    monkeypatch.undo()
    cf.classes["normal"].prompts.append("normal chest radiograph")  # new prompt -> new key
    P.class_embeddings(tiny_model, cf, tokenizer, cache_dir=str(tmp_path))
    assert len(list(tmp_path.glob("*.safetensors"))) == 2
    other = __import__("copy").deepcopy(tiny_model)
    with torch.no_grad():
        other.text.text_projection.weight.mul_(1.01)  # new weights -> new key
    assert P.tower_hash(other, "text") != P.tower_hash(tiny_model, "text")
    assert P.tower_hash(other, "visual") == P.tower_hash(tiny_model, "visual")  # the image tower is unchanged
    before = P.tower_hash(other, "text")
    with torch.no_grad():
        other.text.text_projection.weight.mul_(1.01)  # the same object changed in place: recomputed, not stale
    assert P.tower_hash(other, "text") != before


def _synthetic_tree(root, n=6):
    """NORMAL (dark) / PNEUMONIA (bright) JPEGs named like Kermany's files."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("NORMAL", "PNEUMONIA"):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            arr = (rng.uniform(size=(70, 80)) * (100 if cls == "NORMAL" else 255)).astype(np.uint8)
            name = f"IM-{i:04d}-0001.jpeg" if cls == "NORMAL" else \
                f"person{i // 2}_{'bacteria' if i % 2 else 'virus'}_{i}.jpeg"
            Image.fromarray(arr).save(root / cls / name)
    (root / "NORMAL" / "notes.txt").write_text("not an image")
    return root


def test_folder_tree_labels_from_folder_and_file_names(tmp_path):
    from medclip.eval.inputs import read_labelled_images

    root = _synthetic_tree(tmp_path / "tree")
    table = read_labelled_images(str(root), P.load_class_file(KERMANY_3))
    assert len(table) == 12
    names = P.load_class_file(KERMANY_3).names
    for path, label, pid in zip(table["image"], table["label"], table["patient_id"]):
        base = os.path.basename(path)
        assert names[label] == ("normal" if "IM-" in base else "bacterial" if "bacteria" in base else "viral")
        assert pid == (base[:7] if "IM-" in base else base.split("_")[0])


@pytest.fixture(scope="module")
def saved_tiny(tiny_model_dir):
    return tiny_model_dir


def test_cli_zeroshot_folder_tree_end_to_end(saved_tiny, tmp_path):
    from medclip.cli import main

    root = _synthetic_tree(tmp_path / "tree", n=8)
    out = tmp_path / "out"
    rc = main(["zeroshot", "--model", str(saved_tiny), "--manifest", str(root), "--classes", KERMANY_3,
               "--output", str(out), "--bootstrap", "50", "--calibrate-on", "val", "--cache-dir", str(tmp_path / "c")])
    assert rc == 0
    table = pd.read_csv(out / "probabilities.csv")
    metrics = json.loads((out / "metrics.json").read_text())
    probs = table[[f"prob/{n}" for n in metrics["classes"]]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)
    assert set(table["split"]) == {"val", "test"}  # leak-free calibration split made by patient
    assert table.groupby("patient_id")["split"].nunique().max() == 1
    ev = table[table["evaluated"]]
    assert metrics["n_evaluated"] == len(ev) == (table["split"] == "test").sum()
    for c, name in enumerate(metrics["classes"]):  # metrics recomputed from the CSV agree
        auc = roc_auc_score((ev["label"] == c).astype(int), ev[f"prob/{name}"])
        assert metrics["metrics"][f"auroc/{name}"]["value"] == pytest.approx(auc)
    assert metrics["temperature"] > 0 and metrics["calibration"]["ece"] >= 0
    for fig in ("roc.png", "reliability.png", "confusion.png"):
        assert (out / fig).stat().st_size > 1000


def test_cli_multilabel_manifest_with_unknown_labels(saved_tiny, tmp_path):
    from PIL import Image

    from medclip.cli import main

    rows = []
    rng = np.random.default_rng(1)
    for i in range(10):
        Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        rows.append({"image": f"{i}.png", "patient_id": f"p{i // 2}", "effusion": ["1", "0", "", "-1"][i % 4],
                     "cardiomegaly": str(i % 2)})
    rows.append({"image": "missing.png", "patient_id": "p9", "effusion": "1", "cardiomegaly": "1"})
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    classes = tmp_path / "c.yaml"
    classes.write_text("task: multi\nclasses:\n  effusion: [pleural effusion]\n  cardiomegaly: [enlarged heart]\n"
                       "  No Finding: {prompts: [normal chest], no_finding: true}\n")
    out = tmp_path / "out"
    assert main(["zeroshot", "--model", str(saved_tiny), "--manifest", str(tmp_path / "m.csv"), "--classes",
                 str(classes), "--output", str(out), "--bootstrap", "20", "--no-cache", "--no-figures"]) == 0
    table = pd.read_csv(out / "probabilities.csv")
    assert len(table) == 10 and pd.read_csv(out / "quarantine.csv")["image"].str.endswith("missing.png").all()
    eff = table["label/effusion"]
    assert eff.isna().sum() == 4  # "" and the CheXpert-style -1 are unknown
    # No Finding derived: 1 only when every other condition is known 0
    expected = [1.0 if (e == 0 and c == 0) else 0.0 if (e == 1 or c == 1) else np.nan
                for e, c in zip(eff, table["label/cardiomegaly"])]
    np.testing.assert_array_equal(table["label/No Finding"].to_numpy(), np.array(expected))
    assert json.loads((out / "metrics.json").read_text())["n_positive"]["effusion"] == 3


def test_cli_bad_class_file_is_one_line_error(saved_tiny, tmp_path, capsys):
    from medclip.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("classes:\n  a: [x]\n  b: [y]\nnegative_template: 'no {}'\n")
    assert main(["zeroshot", "--model", str(saved_tiny), "--manifest", str(tmp_path), "--classes", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "negative_template" in err and "bad.yaml" in err


def test_zeroshot_on_real_kermany_subset(saved_tiny, shared_data, tmp_path):
    """Real pediatric X-rays through the real loader: a few per folder via symlinks (no copies)."""
    root = tmp_path / "kermany"
    for cls, pattern in (("NORMAL", "IM-*"), ("PNEUMONIA", "person*")):
        (root / cls).mkdir(parents=True)
        for src in sorted((shared_data / "pneumonia-kermany" / cls).glob(pattern))[:6]:
            (root / cls / src.name).symlink_to(src)
    import medclip

    result = run_zeroshot(medclip.from_pretrained(str(saved_tiny)), str(root),
                          os.path.join(REPO, "recipes", "classes", "pneumonia-kermany.yaml"),
                          n_bootstrap=30, progress=False)
    assert len(result.table) == 12 and result.metrics["n_positive"] == {"NORMAL": 6, "PNEUMONIA": 6}
    m = result.metrics["metrics"]["auroc/PNEUMONIA"]
    assert m["value"] == pytest.approx(roc_auc_score(result.table["label"], result.table["prob/PNEUMONIA"]))


def test_top_level_help_lists_eval_commands(capsys):
    from medclip.cli import main

    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "zeroshot" in out and "retrieve" in out
