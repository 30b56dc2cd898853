"""The quick start's main job, run exactly as the README does, shows CLIP working (issue 17).

``medclip pretrain --recipe recipes/demo.yaml --output runs/demo`` in a fresh folder (the demo corpus
is generated there, as on a fresh clone). From the run folder (``runs/demo/demo_eval/demo_report.json``,
the final ``model/`` on the **test**-split patients, prompted only with text) the three required results:

1. each demo finding: zero-shot AUROC >= 0.85 with a 95% CI above 0.5, over the test images that show no
   unseen combination (the unseen combinations are scored in their own rows, over all test images);
2. the combination no training image or report contains (an enlarged heart with a left effusion):
   95% CI above 0.5;
3. a 16-shot linear probe on the trained image tower beats the same architecture randomly initialised
   for every finding (5 seeds, mean higher) with a paired t-test p < 0.05 on the macro AUROC.

Measured over training seeds 0, 1, 2 (README, Zero-shot and evaluation, with the spread and margins; the
models trained at 0c71203, whose all-image AUROCs equal those of 15db263, scored as the demo report now does):
opacity AUROC 0.999 / 0.970 / 0.985 (margin 0.120, spread 0.029), enlarged heart 1.000 / 1.000 / 1.000
(margin 0.150, spread 0.000), effusion 0.990 / 0.991 / 0.999 (margin 0.140, spread 0.009), the unseen
combination's CI low 0.678 / 0.714 / 0.717 (margin 0.178, spread 0.039) and the probe (smallest per-finding
gain 0.093, spread 0.004; p <= 0.0034, spread 0.0004): every margin is at least twice the spread.
The thresholds are the issue's required values, not tightened or loosened to the measurement.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medclip.data.demo_reports import CARDIOMEGALY, EFFUSION
from medclip.eval.heldout_demo import FINDINGS, HELDOUT_CLASS

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]  # ~3 min on 2 idle cores; much longer on a busy CPU


@pytest.fixture(scope="module")
def main_job(tmp_path_factory) -> dict:
    """Run the quick start's main job in a fresh folder; its stdout, run folder and manifest."""
    cwd = tmp_path_factory.mktemp("quickstart")
    (cwd / "recipes").mkdir()
    shutil.copy(REPO / "recipes" / "demo.yaml", cwd / "recipes" / "demo.yaml")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "medclip", "pretrain", "--recipe", "recipes/demo.yaml",
                           "--output", "runs/demo"], cwd=cwd, env=env, capture_output=True, text=True, timeout=2300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = cwd / "runs" / "demo"
    return {"stdout": proc.stdout, "run": run, "manifest": cwd / "demo_data" / "manifest.csv",
            "report": json.loads((run / "demo_eval" / "demo_report.json").read_text())}


def test_evaluated_on_the_test_patients_with_text_prompts_only(main_job):
    report, df = main_job["report"], pd.read_csv(main_job["manifest"])
    test = df[df["split"] == "test"]
    assert report["split"] == "test" and report["n_images"] == len(test)
    assert report["n_images_findings"] == int((test["heldout"] == 0).sum()) < len(test)
    assert report["zeroshot"][FINDINGS[0]]["n_positive"] == int(test.loc[test["heldout"] == 0, FINDINGS[0]].sum())
    assert report["zeroshot"][HELDOUT_CLASS]["n_positive"] == int(test["cardiomegaly_effusion_left"].sum())
    train = df[df["split"] == "train"]
    assert train["cardiomegaly_effusion_left"].sum() == 0  # the combination is in no training image ...
    heart = list(CARDIOMEGALY)
    left = [p.format(side="left", Side="Left") for p in EFFUSION]
    assert not any(any(h in t for h in heart) and any(e in t for e in left) for t in train["report"])  # nor report
    assert any(any(h in t for h in heart) for t in train["report"]) and any(any(e in t for e in left)
                                                                            for t in train["report"])


def test_each_finding_zero_shot_auroc_at_least_085_with_ci_above_chance(main_job):
    for finding in FINDINGS:
        r = main_job["report"]["zeroshot"][finding]
        assert r["value"] >= 0.85 and r["ci_low"] > 0.5, (finding, r)


def test_unseen_combination_ci_above_chance(main_job):
    r = main_job["report"]["zeroshot"][HELDOUT_CLASS]
    assert r["ci_low"] > 0.5 and r["n_positive"] >= 10, r


def test_probe_on_trained_tower_beats_random_weights(main_job):
    probe = main_job["report"]["probe"]
    assert probe["shots"] == 16 and len(probe["seeds"]) == 5
    for finding in FINDINGS:
        assert np.mean(probe["trained"][finding]) > np.mean(probe["random"][finding]), finding
    assert probe["p"] < 0.05


def test_main_job_prints_each_result_with_ci_and_tested_verdict(main_job):
    lines = main_job["stdout"].splitlines()
    for name in (*FINDINGS, HELDOUT_CLASS):
        line = next(x for x in lines if x.strip().startswith(name) and "AUROC" in x)
        assert "95% CI" in line and "above chance, Holm p=" in line and "NOT above" not in line
    assert any("paired t-test p=" in x and "(trained better, Holm p=" in x for x in lines)
    assert "beats chance" not in main_job["stdout"]
