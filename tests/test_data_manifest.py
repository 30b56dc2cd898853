"""Manifests, reports, leak-free splits, data loaders (covid-cxr-notes) and the synthetic demo corpus."""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import pandas as pd
import pytest
import torch

import medclip
from medclip.config import from_dict
from medclip.data import (
    DataConfig,
    build_dataloaders,
    build_image_transform,
    check_manifest,
    extract_sections,
    load_manifest,
    make_demo_corpus,
    read_iu_xray,
    split_leak_free,
)
from medclip.data.splits import leak_groups
from medclip.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def covid(shared_data):
    return load_manifest(shared_data / "covid-cxr-notes" / "manifest.csv")


def _assert_leak_free(df):
    for key in ("patient_id", "image"):
        per_key = df[df[key] != ""].groupby(key)["split"].nunique()
        assert (per_key == 1).all(), f"{key} in several splits: {per_key[per_key > 1].index[:3].tolist()}"


def test_covid_manifest_loads_canonical(covid, shared_data):
    assert len(covid) == 393 and covid["image"].nunique() == 388
    assert covid["image"].str.startswith(str((shared_data / "covid-cxr-notes").resolve())).all()
    assert covid["line"].iloc[0] == 2 and covid["image_raw"].iloc[0].startswith("images/")
    assert {"finding", "view", "report", "patient_id"} <= set(covid.columns)


def test_covid_split_is_leak_free_across_patient_ids(covid):
    shared = covid[covid["image"].duplicated(keep=False)].groupby("image")["patient_id"].unique()
    linked = shared[shared.map(len) > 1]
    assert len(linked) == 2 and all(set(p) == {"287", "340"} for p in linked)  # one image, two patient ids
    for seed in (0, 1, 2):
        split = split_leak_free(covid, val=0.1, test=0.1, seed=seed)
        _assert_leak_free(split)
        assert split.loc[split["patient_id"].isin(["287", "340"]), "split"].nunique() == 1
        counts = split["split"].value_counts()
        assert abs(counts["test"] - 39.3) < 15 and abs(counts["val"] - 39.3) < 15
    again = split_leak_free(covid, val=0.1, test=0.1, seed=2)
    assert (again["split"] == split["split"]).all()


def test_leak_groups_connect_patient_or_image():
    df = pd.DataFrame({"patient_id": ["a", "b", "", "", "c", "a"], "image": ["1", "2", "2", "3", "4", "5"]})
    groups = leak_groups(df)
    assert groups[0] == groups[5] and groups[1] == groups[2]  # same patient; same image
    assert len({groups[0], groups[1], groups[3], groups[4]}) == 4  # no patient id -> own group


@pytest.mark.slow
def test_covid_dataloader_yields_dict_batches(shared_data, tmp_path, caplog):
    cfg = from_dict(DataConfig, {"manifest": str(shared_data / "covid-cxr-notes" / "manifest.csv"),
                                 "sections": None, "eval_batch_size": 8, "cache_dir": str(tmp_path / "cache")})
    model_config = medclip.get_model_config("tiny-vit")
    with caplog.at_level(logging.INFO, logger="medclip.data"):
        loaders = build_dataloaders(cfg, model_config, medclip.get_tokenizer(model_config), seed=0, out_dir=tmp_path)
    assert "2 of 393 manifest rows skipped" in caplog.text and str(tmp_path / "quarantine.csv") in caplog.text
    assert len(pd.read_csv(tmp_path / "quarantine.csv")) == 2
    assert sum(len(v.dataset) for v in loaders.values()) == 391
    _assert_leak_free(pd.concat([v.dataset.df for v in loaders.values()]))
    batch = next(iter(loaders["train"]))
    assert batch["image"].shape == (8, 1, 64, 64) and batch["image"].dtype == torch.float32
    assert batch["text"].shape == (8, 77) and batch["text"].dtype == torch.int64
    assert len(batch["patient_id"]) == 8 and len(batch["path"]) == 8
    assert (batch["text"].argmax(dim=1) > 0).all()  # EOS (highest id) after the text
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 388  # the check pass filled the cache
    # splits.csv is a manifest again (e.g. `medclip retrieve --manifest RUN/splits.csv --split test`)
    again = load_manifest(tmp_path / "splits.csv")
    loaded = pd.concat([v.dataset.df for v in loaders.values()])
    assert sorted(zip(again["image"], again["split"])) == sorted(zip(loaded["image"], loaded["split"]))
    assert set(again["source_line"].astype(int)) == set(loaded["line"])


def test_reserved_manifest_column_is_a_one_line_error(tmp_path):
    path = tmp_path / "m.csv"
    pd.DataFrame({"line": [1], "image": ["a.png"], "report": ["Clear."]}).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"m\.csv: column\(s\) line are reserved .* rename them"):
        load_manifest(path)


def test_report_sections():
    report = ("EXAMINATION: CHEST PA\nINDICATION: cough\nFINDINGS: Lungs  are\nclear.\n"
              "IMPRESSION: No acute process.\nADDENDUM: IMPRESSION: Small left effusion.")
    assert extract_sections(report, ["findings", "impression"]) == "Lungs are clear. Small left effusion."
    assert extract_sections(report, ["impression"]) == "Small left effusion."  # the LAST impression (CheXzero)
    assert extract_sections(report, None).startswith("EXAMINATION: CHEST PA INDICATION: cough")
    assert extract_sections("Opacity in the left lung.", ["impression"]) == "Opacity in the left lung."
    assert extract_sections("FINDINGS: clear lungs", ["impression"]) == ""


@pytest.mark.slow
def test_read_iu_xray(shared_data):
    df = read_iu_xray(shared_data / "reports" / "iu-xray-reports.tgz")
    assert len(df) == 3955 and df["uid"].iloc[0] == "CXR1"
    row = df[df["uid"] == "CXR10"].iloc[0]
    assert row["impression"] == "No acute cardiopulmonary process."
    assert row["findings"].startswith("The cardiomediastinal silhouette is within normal limits")
    assert row["images"] == "CXR10_IM-0002-1001;CXR10_IM-0002-2001"
    assert extract_sections(row["report"], ["impression"]) == row["impression"]


def test_data_config_is_strict():
    with pytest.raises(ConfigError, match="unknown config key 'data.colums'"):
        from_dict(DataConfig, {"colums": {}}, "data")
    with pytest.raises(ConfigError, match="data.columns.imag"):
        from_dict(DataConfig, {"columns": {"imag": "x"}}, "data")
    with pytest.raises(ConfigError, match="resize"):
        from_dict(DataConfig, {"resize": "stretch"}, "data")


@pytest.fixture(scope="module")
def demo(demo_corpus):
    return demo_corpus  # conftest: make_demo_corpus(..., n_patients=40, seed=0, image_size=64)


def test_demo_corpus_deterministic_and_heldout(demo, tmp_path):
    df = pd.read_csv(demo)
    again = make_demo_corpus(tmp_path, n_patients=40, seed=0, image_size=64)
    assert again.read_bytes() == demo.read_bytes()
    for rel in df["image"].iloc[:12]:
        assert hashlib.sha1((tmp_path / rel).read_bytes()).digest() == \
            hashlib.sha1((demo.parent / rel).read_bytes()).digest()
    assert make_demo_corpus(tmp_path / "other", n_patients=5, seed=1, image_size=32).read_bytes() != \
        make_demo_corpus(tmp_path / "same", n_patients=5, seed=0, image_size=32).read_bytes()
    assert df["heldout"].sum() > 0 and (df.loc[df["heldout"] == 1, "split"] != "train").all()
    train = df[df["split"] == "train"]
    assert not train["report"].str.contains("left upper", case=False).any()
    words = set(" ".join(train["report"]).lower().replace(".", " ").split())
    assert {"opacity", "in", "the", "left", "upper", "zone"} <= words
    assert df["image"].str.endswith(".dcm").any() and df["image"].str.endswith(".png").any()
    _assert_leak_free(df)
    good, quarantine = check_manifest(load_manifest(demo))
    assert len(quarantine) == 0 and len(good) == len(df)


@pytest.mark.slow
def test_demo_findings_visible_to_a_linear_probe(tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    demo = make_demo_corpus(tmp_path, n_patients=100, seed=0, image_size=64)  # ~140 training images
    df = load_manifest(demo)
    transform = build_image_transform(medclip.get_model_config("tiny-vit").vision)
    x = np.stack([transform.prepare(p)[0, ::2, ::2].ravel() for p in df["image"]])
    train = (df["split"] == "train").to_numpy()
    for label in ("cardiomegaly", "effusion", "opacity_right_lower"):
        y = pd.read_csv(demo)[label].to_numpy()
        probe = LogisticRegression(C=0.1, max_iter=2000).fit(x[train], y[train])
        assert roc_auc_score(y[~train], probe.predict_proba(x[~train])[:, 1]) > 0.9, label
