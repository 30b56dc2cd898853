"""``medclip data import``: the public corpora's published layouts (tiny replicas) → manifests that train
(MIMIC-CXR, PadChest, IU X-ray) or evaluate (CheXpert, ChestX-ray14)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import corpus_replicas as R
import pandas as pd
import pytest
from conftest import demo_recipe_dict

from medclip.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpora(tmp_path_factory, shared_data):
    root = tmp_path_factory.mktemp("corpora")
    jpg, reports = R.make_mimic_jpg(root)
    return {"root": root, "mimic-jpg": jpg, "mimic-reports": reports, "mimic-dicom": R.make_mimic_dicom(root),
            "chexpert": R.make_chexpert(root), "chestxray14": R.make_chestxray14(root),
            "padchest": R.make_padchest(root),
            "iu-reports": shared_data / "reports" / "iu-xray-reports.tgz",
            "iu-png": R.make_iu_pngs(root, shared_data / "reports" / "iu-xray-reports.tgz")}


def _import(capsys, name, root, out, *extra) -> pd.DataFrame:
    assert main(["data", "import", name, str(root), "--output", str(out), *extra]) == 0, capsys.readouterr().err
    assert f"manifest written to {out}" in capsys.readouterr().out
    df = pd.read_csv(out, dtype=str, keep_default_na=False)
    for rel in df["image"]:  # relative to the manifest's folder, and pointing at the real files
        assert not os.path.isabs(rel) and (out.parent / rel).is_file(), rel
    return df


def test_mimic_jpg_views_official_split_labels_and_reports(corpora, tmp_path, capsys):
    df = _import(capsys, "mimic-cxr-jpg", corpora["mimic-jpg"], tmp_path / "m.csv",
                 "--reports", str(corpora["mimic-reports"]))
    assert len(df) == 8 and df["patient_id"].nunique() == 5 and df["study_id"].nunique() == 6
    by_id = df.set_index("dicom_id")
    assert by_id.loc["096052b7-d256dc40-453a102b-fa7d01c6-1b22c6b4", "split"] == "val"  # validate -> val
    assert by_id.loc["174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962", "view"] == "LATERAL"
    raw = pd.read_csv(corpora["mimic-jpg"] / "mimic-cxr-2.0.0-chexpert.csv.gz", dtype=str, keep_default_na=False)
    want = {"1.0": "1", "0.0": "0", "-1.0": "-1", "": ""}
    for _, row in raw.iterrows():  # every image of a study carries the study's labels, -1 kept
        got = df[df["study_id"] == row["study_id"]]
        assert (got["Edema"] == want[row["Edema"]]).all() and (got["Pneumonia"] == want[row["Pneumonia"]]).all()
    report = (tmp_path / df["report_path"].iloc[0]).read_text()
    assert "Finding number 0" in report and df["report_path"].iloc[0].endswith("p10/p10000032/s50414267.txt")
    front = _import(capsys, "mimic-cxr-jpg", corpora["mimic-jpg"], tmp_path / "f.csv", "--frontal-only",
                    "--uncertain", "zeros")
    assert set(front["view"]) == {"PA", "AP"} and len(front) == 6 and "report_path" not in front
    assert "-1" not in set(front["Edema"])


def test_mimic_dicom_views_from_tags_and_jpg_meta(corpora, tmp_path, capsys):
    df = _import(capsys, "mimic-cxr", corpora["mimic-dicom"], tmp_path / "d.csv")
    assert dict(zip(df["dicom_id"], df["view"]))["174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962"] == "LATERAL"
    assert (df["split"] == "").all() and (tmp_path / df["report_path"].iloc[0]).is_file()
    meta = _import(capsys, "mimic-cxr", corpora["mimic-dicom"], tmp_path / "j.csv", "--jpg-meta",
                   str(corpora["mimic-jpg"]), "--frontal-only")
    assert len(meta) == 6 and set(meta["split"]) == {"train", "val", "test"} and "Edema" in meta


def test_chexpert_either_prefix_views_and_uncertain(corpora, tmp_path, capsys):
    df = _import(capsys, "chexpert", corpora["root"], tmp_path / "c.csv")  # the folder holding CheXpert-v1.0-small
    raw = pd.read_csv(corpora["chexpert"] / "train.csv", dtype=str, keep_default_na=False)
    assert len(df) == 60 and (df["split"] == "val").sum() == 12 and "report" not in df
    assert raw["Path"].iloc[0].startswith("CheXpert-v1.0-small/")
    assert df.loc[3, "view"] == "LATERAL" and df.loc[0, "view"] == "PA" and df.loc[0, "patient_id"] == "patient00001"
    want = raw["Lung Opacity"].map({"1.0": "1", "0.0": "0", "-1.0": "-1", "": ""})
    assert (df["Lung Opacity"].iloc[:48] == want).all()
    ones = _import(capsys, "chexpert", corpora["chexpert"], tmp_path / "o.csv", "--uncertain", "ones", "--frontal-only")
    uncertain = (raw["Edema"] == "-1.0") & (raw["Frontal/Lateral"] == "Frontal")
    assert uncertain.any() and (ones[ones["split"] == "train"]["Edema"].to_numpy()[
        uncertain[raw["Frontal/Lateral"] == "Frontal"].to_numpy()] == "1").all()


def test_chestxray14_lists_label_columns_and_image_folders(corpora, tmp_path, capsys):
    df = _import(capsys, "chestxray14", corpora["chestxray14"], tmp_path / "x.csv")
    assert len(df) == 100 and (df["split"] == "test").sum() == 34 and "report" not in df
    assert {p.split("/")[-3] for p in df["image"]} == {"images_001", "images_002"}
    row = df.set_index(df["image"].str.split("/").str[-1]).loc["00000001_001.png"]
    assert row["Cardiomegaly"] == "1" and row["Atelectasis"] == "0" and row["study_id"] == "1/1"


def test_padchest_reports_label_lists_and_16_bit(corpora, tmp_path, capsys):
    df = _import(capsys, "padchest", corpora["padchest"], tmp_path / "p.csv")
    assert df.loc[1, "padchest_labels"] == "cardiomegaly|pleural effusion" and df.loc[2, "padchest_labels"] == \
        "costophrenic angle blunting"
    assert df.loc[1, "report"].startswith("cardiomegalia") and df["patient_id"].nunique() == 4
    front = _import(capsys, "padchest", corpora["padchest"], tmp_path / "f.csv", "--frontal-only")
    assert set(front["view"]) == {"PA", "AP", "AP_horizontal"}


@pytest.mark.slow
def test_iu_xray_each_report_its_own_patient(corpora, tmp_path, capsys):
    out = tmp_path / "iu.csv"
    assert main(["data", "import", "iu-xray", str(corpora["iu-png"]), "--reports", str(corpora["iu-reports"]),
                 "--output", str(out)]) == 0
    assert "images the reports name are not in" in capsys.readouterr().out  # a partial PNG set is reported
    df = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert df.loc[0, "image"].endswith("CXR1_1_IM-0001-3001.png") and df.loc[0, "patient_id"] == "CXR1"
    assert (df["patient_id"] == df["study_id"]).all() and df["report"].str.contains("IMPRESSION").any()
    assert main(["data", "import", "iu-xray", str(corpora["iu-png"]), "--reports", str(corpora["iu-reports"]),
                 "--output", str(out), "--frontal-only"]) == 2


@pytest.mark.parametrize("name,missing", [("mimic-cxr-jpg", "mimic-cxr-2.0.0-metadata.csv.gz"),
                                          ("mimic-cxr", "cxr-record-list.csv.gz"), ("chexpert", "train.csv"),
                                          ("chestxray14", "Data_Entry_2017.csv"),
                                          ("padchest", "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"),
                                          ("iu-xray", "no .png images")])
def test_wrong_root_is_one_line_error_naming_the_missing_file(corpora, tmp_path, capsys, name, missing):
    extra = ["--reports", str(corpora["iu-reports"])] if name == "iu-xray" else []
    assert main(["data", "import", name, str(corpora["mimic-dicom"] if name != "mimic-cxr" else corpora["padchest"]),
                 "--output", str(tmp_path / "x.csv"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and missing in err and "not a" in err and name in err


def test_unreadable_label_is_one_line_error(corpora, tmp_path, capsys):
    bad = tmp_path / "chexpert"
    bad.mkdir()
    raw = pd.read_csv(corpora["chexpert"] / "train.csv", dtype=str, keep_default_na=False)
    raw.loc[5, "Edema"] = "2.0"
    raw.to_csv(bad / "train.csv", index=False)
    assert main(["data", "import", "chexpert", str(bad), "--output", str(tmp_path / "x.csv")]) == 2
    err = capsys.readouterr().err
    assert "column 'Edema' has unreadable label value(s) '2.0'" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("name", ["mimic-cxr-jpg", "padchest", "iu-xray"])
@pytest.mark.slow
def test_training_manifests_train_one_step(corpora, tmp_path, capsys, name):
    from medclip.train.config import recipe_from_dict
    from medclip.train.loop import train

    root, extra = {"mimic-cxr-jpg": (corpora["mimic-jpg"], ["--reports", str(corpora["mimic-reports"])]),
                   "padchest": (corpora["padchest"], []),
                   "iu-xray": (corpora["iu-png"], ["--reports", str(corpora["iu-reports"])])}[name]
    manifest = tmp_path / "manifest.csv"
    assert main(["data", "import", name, str(root), "--output", str(manifest), *extra]) == 0
    recipe = demo_recipe_dict(manifest, epochs=1, max_steps=1, eval_every=0, batch_size=4)
    recipe["data"]["sections"] = ["findings", "impression"] if name != "padchest" else None
    result = train(recipe_from_dict(recipe), str(tmp_path / "run"))
    assert result["step"] == 1 and math.isfinite(result["last_loss"])
    assert pd.read_csv(tmp_path / "run" / "quarantine.csv").empty


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory):
    import torch

    import medclip

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny") / "model"
    medclip.create_model("tiny-vit").save_pretrained(str(folder))
    return folder


@pytest.mark.parametrize("name,classes,split", [("chexpert", "chexpert-5.yaml", "val"),
                                                ("chestxray14", "chestxray14.yaml", "test")])
@pytest.mark.slow
def test_evaluation_manifests_run_zeroshot_and_probe(corpora, saved_tiny, tmp_path, capsys, name, classes, split):
    manifest = tmp_path / "eval.csv"
    assert main(["data", "import", name, str(corpora[name]), "--output", str(manifest)]) == 0
    class_file = str(REPO / "recipes" / "classes" / classes)
    assert main(["zeroshot", "--model", str(saved_tiny), "--manifest", str(manifest), "--classes", class_file,
                 "--split", split, "--bootstrap", "20", "--no-figures", "--no-cache",
                 "--output", str(tmp_path / "zs")]) == 0
    probs = pd.read_csv(tmp_path / "zs" / "probabilities.csv")
    assert len(probs) == (12 if name == "chexpert" else 34)
    assert main(["probe", "--model", str(saved_tiny), "--manifest", str(manifest), "--classes", class_file,
                 "--shots", "1", "--max-test", "16", "--n-bootstrap", "20", "--set", "probe.search_steps=1",
                 "--cache-dir", str(tmp_path / "cache"), "--output", str(tmp_path / "probe"), "--no-progress"]) == 0
    assert "AUROC" in capsys.readouterr().out and (tmp_path / "probe" / "metrics.json").is_file()
