"""Held-out demo zero-shot (AUROC with CI) and the ``medclip retrieve`` command on real notes."""

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from medclip.errors import DataError


@pytest.fixture(scope="module")
def demo_manifest(demo_corpus):
    return str(demo_corpus)


def test_heldout_demo_report_auroc_with_ci(tiny_model, demo_manifest, tmp_path):
    from medclip.eval.heldout_demo import format_heldout, heldout_demo_report

    report = heldout_demo_report(tiny_model, demo_manifest, str(tmp_path), n_bootstrap=100)
    df = pd.read_csv(demo_manifest)
    evaluated = df[df["split"].isin(["val", "test"])]
    assert report["n_images"] == len(evaluated)
    assert report["n_positive"] == int(evaluated["opacity_left_upper"].sum()) > 0
    assert (df.loc[df["split"] == "train", "opacity_left_upper"] == 0).all()  # truly held out of training
    a = report["auroc"]
    assert a["ci_low"] <= a["value"] <= a["ci_high"]
    table = pd.read_csv(tmp_path / "probabilities.csv")  # the AUROC is the one of the written probabilities
    assert a["value"] == pytest.approx(roc_auc_score(table["label/heldout"], table["prob/heldout"]))
    assert 0 <= report["auroc_among_opacities"]["value"] <= 1
    assert json.loads((tmp_path / "heldout.json").read_text())["auroc"]["value"] == pytest.approx(a["value"])
    assert "AUROC" in format_heldout(report) and "95% CI" in format_heldout(report)


def test_heldout_prompt_must_use_training_words_only(tiny_model, demo_manifest):
    from medclip.eval.heldout_demo import heldout_demo_report

    with pytest.raises(DataError, match="apical"):
        heldout_demo_report(tiny_model, demo_manifest, prompts=["apical opacity on the left"], n_bootstrap=10)


@pytest.mark.slow
def test_pretrain_report_only_for_demo_recipes(tiny_model, demo_manifest, tmp_path, caplog):
    from types import SimpleNamespace

    from medclip.eval.heldout_demo import pretrain_report

    def recipe(manifest, demo=True):
        return SimpleNamespace(data=SimpleNamespace(manifest=str(manifest), demo=demo))

    tiny_model.save_pretrained(str(tmp_path / "model"))
    line = pretrain_report(str(tmp_path / "model"), recipe(demo_manifest))
    assert line.startswith("zero-shot on the held-out finding") and (tmp_path / "zeroshot_heldout" / "roc.png").exists()
    assert pretrain_report(str(tmp_path / "model"), recipe(demo_manifest, demo=False)) is None
    other = tmp_path / "other.csv"
    pd.DataFrame({"image": ["a.png"], "report": ["x"]}).to_csv(other, index=False)
    assert pretrain_report(str(tmp_path / "model"), recipe(other)) is None
    assert "held-out demo report skipped" in caplog.text and "not a demo-corpus manifest" in caplog.text


def test_cli_retrieve_on_real_covid_notes(tiny_model, shared_data, tmp_path, capsys):
    from medclip.cli import main

    src = shared_data / "covid-cxr-notes"
    df = pd.read_csv(src / "manifest.csv", dtype=str, keep_default_na=False).head(24)
    df["image"] = [str(src / p) for p in df["image"]]
    df.loc[len(df)] = {**df.iloc[0].to_dict(), "image": str(tmp_path / "missing.jpg"), "report": "other text"}
    df.to_csv(tmp_path / "m.csv", index=False)
    tiny_model.save_pretrained(str(tmp_path / "model"))
    out = tmp_path / "out"
    assert main(["retrieve", "--model", str(tmp_path / "model"), "--manifest", str(tmp_path / "m.csv"),
                 "--sections", "--output", str(out)]) == 0
    m = json.loads((out / "retrieval.json").read_text())
    assert m["n"] == 24 and m["n_quarantined"] == 1
    assert m["n_distinct_texts"] == df.head(24)["report"].map(lambda t: " ".join(t.split())).nunique()
    assert 0 <= m["i2t_R@1"] <= m["i2t_R@5"] <= m["i2t_R@10"] <= 1 and m["i2t_median_rank"] >= 1
    assert np.isfinite(m["alignment"]) and m["uniformity_text"] <= 0
    out_text = capsys.readouterr().out
    assert "image->text" in out_text and f"wrote {out}/retrieval.json" in out_text
    assert main(["retrieve", "--model", str(tmp_path / "model"), "--manifest", str(tmp_path / "m.csv"), "--sections",
                 "--ks", "1"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("nothing saved (give --output DIR")


@pytest.mark.slow
def test_demo_findings_class_file_on_test_split_with_calibration(tiny_model, demo_manifest):
    import os

    from medclip.eval.zeroshot import run_zeroshot

    classes = os.path.join(os.path.dirname(os.path.dirname(__file__)), "recipes", "classes", "demo-findings.yaml")
    result = run_zeroshot(tiny_model, demo_manifest, classes, split="test", calibrate_on="val", n_bootstrap=20,
                          progress=False)
    df = pd.read_csv(demo_manifest)
    assert set(result.table["split"]) == {"test", "val"}
    assert result.metrics["n_evaluated"] == (df["split"] == "test").sum()
    assert result.metrics["n_positive"]["effusion"] == df.loc[df["split"] == "test", "effusion"].sum()
    assert result.metrics["n_positive"]["normal"] == df.loc[df["split"] == "test", "normal"].sum()
    with pytest.raises(DataError, match="no rows with split 'tset'"):
        run_zeroshot(tiny_model, demo_manifest, classes, split="tset", n_bootstrap=5, progress=False)
