"""The demo report (zero-shot AUROCs with CI, probe) and the ``medclip retrieve`` command on real notes."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from medclip.errors import DataError


@pytest.fixture(scope="module")
def demo_manifest(demo_corpus):
    return str(demo_corpus)


@pytest.mark.slow
def test_demo_report_on_test_split_with_ci_and_probe(tiny_model, demo_manifest, tmp_path):
    from medclip.eval.heldout_demo import (
        DEMO_CLASSES,
        HELDOUT_CLASS,
        DemoReportOptions,
        demo_report,
        format_demo_report,
        report_pvalues,
    )
    from medclip.eval.significance import verdicts

    report = demo_report(tiny_model, demo_manifest, str(tmp_path),
                         DemoReportOptions(n_bootstrap=100, probe_seeds=(0, 1), shots=3))
    df = pd.read_csv(demo_manifest)
    test = df[df["split"] == "test"]
    assert report["n_images"] == len(test) and report["split"] == "test"
    column = DEMO_CLASSES["classes"][HELDOUT_CLASS]["column"]
    assert (df.loc[df["split"] == "train", column] == 0).all()  # truly held out of training
    table = pd.read_csv(tmp_path / "probabilities.csv")  # the AUROCs are those of the written probabilities
    assert set(table["image"].map(lambda p: p.split("/")[-1])) == set(test["image"].map(lambda p: p.split("/")[-1]))
    seen = table[table["heldout"] == 0]  # findings: the images without an unseen combination
    assert 0 < len(seen) < len(table) and report["n_images_findings"] == len(seen)
    for name, r in report["zeroshot"].items():
        rows = table if "column" in DEMO_CLASSES["classes"][name] else seen
        assert r["value"] == pytest.approx(roc_auc_score(rows[f"label/{name}"], rows[f"prob/{name}"]))
        assert r["ci_low"] <= r["value"] <= r["ci_high"] and r["n_positive"] == int(rows[f"label/{name}"].sum())
    assert set(report["findings_all_images"]) == {"opacity", "cardiomegaly", "effusion"}
    for name, r in report["findings_all_images"].items():
        assert r["value"] == pytest.approx(roc_auc_score(table[f"label/{name}"], table[f"prob/{name}"]))
    assert len(report["probe"]["macro_trained"]) == 2 and 0 <= report["probe"]["p"] <= 1
    assert json.loads((tmp_path / "demo_report.json").read_text())["zeroshot"]["effusion"]["value"] == \
        pytest.approx(report["zeroshot"]["effusion"]["value"])
    text = format_demo_report(report, verdicts(report_pvalues(report)))
    assert "95% CI" in text and "Holm p=" in text and "never in a training image or report" in text
    assert f"each finding over the {len(seen)} images without an unseen combination" in text
    assert f"the findings over all {len(table)} images, unseen combinations included: opacity " in text


def test_demo_prompts_must_use_training_words_only(tiny_model, demo_manifest):
    import copy

    from medclip.eval.heldout_demo import DEMO_CLASSES, HELDOUT_CLASS, DemoReportOptions, demo_report

    classes = copy.deepcopy(DEMO_CLASSES)
    classes["classes"][HELDOUT_CLASS]["prompts"] = ["apical opacity on the left"]
    with pytest.raises(DataError, match="apical"):
        demo_report(tiny_model, demo_manifest, options=DemoReportOptions(classes=classes, n_bootstrap=10,
                                                                         probe_seeds=()))


@pytest.mark.slow
def test_pretrain_report_only_for_demo_recipes(tiny_model, demo_manifest, tmp_path, caplog):
    from types import SimpleNamespace

    from medclip.eval.heldout_demo import pretrain_report

    def recipe(manifest, demo=True):
        return SimpleNamespace(data=SimpleNamespace(manifest=str(manifest), demo=demo))

    tiny_model.save_pretrained(str(tmp_path / "model"))
    report = pretrain_report(str(tmp_path / "model"), recipe(demo_manifest))
    assert set(report["zeroshot"]) >= {"opacity", "cardiomegaly", "effusion"}
    assert (tmp_path / "demo_eval" / "roc.png").exists()
    assert pretrain_report(str(tmp_path / "model"), recipe(demo_manifest, demo=False)) is None
    other = tmp_path / "other.csv"
    pd.DataFrame({"image": ["a.png"], "report": ["x"]}).to_csv(other, index=False)
    assert pretrain_report(str(tmp_path / "model"), recipe(other)) is None
    assert "demo report skipped" in caplog.text and "not a demo-corpus manifest" in caplog.text
    caplog.clear()  # a demo manifest without the column that says which images show an unseen combination
    old = pd.read_csv(demo_manifest).drop(columns="heldout")
    old["image"] = [str(Path(demo_manifest).parent / p) for p in old["image"]]  # the images still resolve
    old.to_csv(tmp_path / "old_demo.csv", index=False)
    assert pretrain_report(str(tmp_path / "model"), recipe(tmp_path / "old_demo.csv")) is None
    assert "no 'heldout' column" in caplog.text


@pytest.mark.slow
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
    assert 0 < m["p_i2t_R@5"] <= 1 and m["n_permutations"] >= 99 and "null_t2i_R@5" in m
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


def test_demo_class_file_has_the_main_jobs_prompts():
    """recipes/classes/demo-findings.yaml asks what the main job reports (same prompts, same columns)."""
    from pathlib import Path

    import yaml

    from medclip.eval.heldout_demo import DEMO_CLASSES

    data = yaml.safe_load((Path(__file__).parents[1] / "recipes" / "classes" / "demo-findings.yaml").read_text())
    assert {k: data["classes"][k] for k in DEMO_CLASSES["classes"]} == DEMO_CLASSES["classes"]
    assert data["templates"] == DEMO_CLASSES["templates"] and data["task"] == "multi"
