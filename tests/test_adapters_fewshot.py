"""The few-shot protocol on real data: patient-level shot draws, split CSVs, the CLI and the grid."""

from __future__ import annotations

import medclip_adapters as ma
import numpy as np
import pandas as pd
import pytest
from medclip_adapters.fewshot import apply_split_csv, load_table, sample_split, save_split, summarize

from medclip.cli import main
from medclip.errors import DataError

CLASSES = "recipes/classes/pneumonia-kermany.yaml"
CLASSES_3 = "recipes/classes/pneumonia-kermany-3class.yaml"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def kermany(shared_data):
    return load_table(str(shared_data / "pneumonia-kermany"), CLASSES)


def test_kermany_table_groups_patients_by_file_name(kermany):
    task, table = kermany
    assert task.classes == ["NORMAL", "PNEUMONIA"] and len(table) == 5216
    person = table[table["image"].str.contains("/person1000_")]
    assert set(person["patient_id"]) == {"person1000"} and len(person) == 2  # bacteria + virus: one patient
    assert table.loc[table["image"].str.endswith("IM-0115-0001.jpeg"), "patient_id"].item() == "IM-0115"


def test_shots_are_patient_level_and_repeat_with_the_seed(kermany):
    task, table = kermany
    split = sample_split(table, task, shots=8, seed=3)
    counts = split.groupby(["fewshot_split", "label"]).size()
    assert counts["train"].tolist() == [8, 8] and counts["val"].tolist() == [4, 4]
    by_patient = split[split["fewshot_split"] != "unused"].groupby("patient_id")["fewshot_split"].nunique()
    assert by_patient.max() == 1  # no patient in two splits
    shot_patients = set(split.loc[split["fewshot_split"].isin(["train", "val"]), "patient_id"])
    assert not (split["patient_id"].isin(shot_patients) & (split["fewshot_split"] == "test")).any()
    assert (split["fewshot_split"] == "test").sum() > 5000
    assert split["fewshot_split"].equals(sample_split(table, task, shots=8, seed=3)["fewshot_split"])
    assert not split["fewshot_split"].equals(sample_split(table, task, shots=8, seed=4)["fewshot_split"])


def test_multilabel_draws_positives_and_negatives_per_condition():
    task = ma.Task(classes=["a", "b"], kind="multi")
    rng = np.random.default_rng(0)
    table = pd.DataFrame({"image": [f"i{i}" for i in range(60)], "patient_id": [f"p{i // 2}" for i in range(60)],
                          "a": rng.integers(0, 2, 60).astype(float), "b": rng.integers(0, 2, 60).astype(float)})
    split = sample_split(table, task, shots=2, seed=0)
    train = split[split["fewshot_split"] == "train"]
    for c in "ab":
        assert (train[c] == 1).sum() >= 2 and (train[c] == 0).sum() >= 2
    with pytest.raises(DataError, match="not enough patients"):
        sample_split(table, task, shots=20, seed=0)


def test_split_csv_round_trip(kermany, tmp_path):
    task, table = kermany
    split = sample_split(table, task, shots=1, seed=0)
    save_split(split, str(tmp_path / "split.csv"))
    again = apply_split_csv(table, str(tmp_path / "split.csv"))
    assert again.set_index("image")["fewshot_split"].equals(split.set_index("image")["fewshot_split"])


@pytest.mark.slow
def test_coop_command_end_to_end_and_repeats_from_its_split_csv(shared_data, tmp_path, capsys):
    args = ["--model", "tiny-vit", "--manifest", str(shared_data / "pneumonia-kermany"), "--classes", CLASSES_3,
            "--shots", "2", "--seed", "1", "--epochs", "2", "--n-ctx", "4", "--max-test", "24", "--n-bootstrap", "50",
            "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    assert main(["coop", *args, "--output", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "AUROC" in out and "95% CI" in out
    run = tmp_path / "a"
    for name in ("config.json", "split.csv", "metrics.json", "predictions.csv", "adapter/method.json",
                 "adapter/weights.safetensors"):
        assert (run / name).exists(), name
    split = pd.read_csv(run / "split.csv")
    assert (split["fewshot_split"] == "train").sum() == 6  # 2 shots x normal/bacterial/viral
    assert main(["coop", *args, "--split-csv", str(run / "split.csv"), "--output", str(tmp_path / "b")]) == 0
    first = pd.read_csv(run / "predictions.csv")
    second = pd.read_csv(tmp_path / "b" / "predictions.csv")
    pd.testing.assert_frame_equal(first, second)


@pytest.mark.slow
def test_fewshot_grid_writes_results_summary_and_curve(shared_data, tmp_path):
    out = tmp_path / "grid"
    code = main(["fewshot", "--model", "tiny-vit", "--manifest", str(shared_data / "pneumonia-kermany"),
                 "--classes", CLASSES, "--methods", "probe,tip-adapter", "--shots", "1,2", "--seeds", "1,2",
                 "--max-test", "20", "--n-bootstrap", "20", "--set", "probe.search_steps=1", "--set", "grid=3",
                 "--cache-dir", str(tmp_path / "cache"), "--output", str(out), "--no-progress"])
    assert code == 0
    results = pd.read_csv(out / "results.csv")
    assert len(results) == 3 * 2 * 2  # (zero-shot + 2 methods) x shots x seeds
    assert {"method", "shots", "seed", "auroc", "accuracy", "ece", "max_test", "n_test"} <= set(results.columns)
    assert (results["max_test"] == 20).all() and results["auroc"].between(0, 1).all()
    summary = pd.read_csv(out / "summary.csv")
    assert {"auroc_ci_low", "auroc_ci_high"} <= set(summary.columns)
    tip2 = results[(results["method"] == "tip-adapter") & (results["shots"] == 2)]["auroc"]
    row = summary[(summary["method"] == "tip-adapter") & (summary["shots"] == 2)].iloc[0]
    assert row["auroc"] == pytest.approx(tip2.mean())
    assert (out / "fewshot_curve.png").stat().st_size > 1000


def test_bad_input_is_one_line_exit_2(shared_data, tmp_path, capsys):
    code = main(["coop", "--model", "tiny-vit", "--manifest", str(shared_data / "pneumonia-kermany"),
                 "--classes", CLASSES, "--shots", "5000", "--output", str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "not enough patients" in err and len(err.strip().splitlines()) == 1


def test_medclip_never_imports_the_adapters_at_import_time():
    """Every ``import medclip_adapters`` inside the medclip package sits in a function (run-time only)."""
    import ast
    from pathlib import Path

    import medclip

    offenders = []
    for path in Path(medclip.__file__).parent.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        inside = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                  for n in ast.walk(f)}
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(n.split(".")[0] == "medclip_adapters" for n in names) and id(node) not in inside:
                offenders.append(f"{path.name}:{node.lineno}")
    assert not offenders, offenders
    assert "medclip_adapters" in (Path(medclip.__file__).parent / "commands" / "fewshot.py").read_text()


def test_summary_is_the_seed_mean_with_a_t_interval_clipped_to_unit_range():
    results = pd.DataFrame({"method": ["probe"] * 3, "shots": [1] * 3, "auroc": [0.93, 0.70, 0.90],
                            "accuracy": [0.70, 0.71, 0.72], "ece": [0.01, 0.30, 0.02]})
    row = summarize(results).iloc[0]
    assert row["n_seeds"] == 3 and row["auroc"] == pytest.approx(np.mean([0.93, 0.70, 0.90]))
    half = 4.302653 * np.std([0.70, 0.71, 0.72], ddof=1) / np.sqrt(3)  # t(0.975, 2) * s / sqrt(n)
    assert row["accuracy_ci_low"] == pytest.approx(0.71 - half, abs=1e-6)
    assert row["auroc_ci_high"] == 1.0 and row["ece_ci_low"] == 0.0  # the raw t-interval overshoots [0, 1]
