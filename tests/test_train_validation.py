"""Validation never touches the test split: without a validation split it is carved from training patients."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import demo_recipe_dict

import medclip
from medclip.train.build import build_data
from medclip.train.config import recipe_from_dict
from medclip.train.distributed import DistInfo


def _manifest_without_val(demo_corpus, tmp_path) -> str:
    df = pd.read_csv(demo_corpus)
    df["image"] = [str(demo_corpus.parent / p) for p in df["image"]]
    df["split"] = df["split"].replace({"val": "train"})  # a train/test manifest, as many public corpora ship
    path = tmp_path / "train_test.csv"
    df.to_csv(path, index=False)
    return str(path)


def _build(manifest, tmp_path, **data):
    spec = demo_recipe_dict(manifest)
    spec["data"].update(data)
    recipe = recipe_from_dict(spec)
    return build_data(recipe, medclip.get_model_config("tiny-vit"), DistInfo(), tmp_path)


def test_validation_is_carved_from_training_patients_never_test(demo_corpus, tmp_path):
    manifest = _manifest_without_val(demo_corpus, tmp_path)
    given = pd.read_csv(manifest)
    test_patients = set(given.loc[given["split"] == "test", "patient_id"])
    train_patients = set(given.loc[given["split"] == "train", "patient_id"])
    source = _build(manifest, tmp_path)
    dataset, val_loader = source.dataset, source.val
    val_patients = set(val_loader.dataset.df["patient_id"])
    assert val_patients and val_patients <= train_patients and not val_patients & test_patients
    assert not set(dataset.df["patient_id"]) & val_patients  # carved out of training, not shared with it
    assert len(val_loader.dataset) == pytest.approx(0.1 * (given["split"] == "train").sum(), abs=4)
    written = pd.read_csv(tmp_path / "splits.csv")  # the carved split is recorded with the run
    assert set(written.loc[written["split"] == "val", "patient_id"]) == val_patients
    assert (written.loc[written["split"] == "test", "patient_id"].isin(test_patients)).all()


def test_without_validation_fraction_there_is_no_validation_not_test(demo_corpus, tmp_path, caplog):
    source = _build(_manifest_without_val(demo_corpus, tmp_path), tmp_path, val=0.0)
    assert source.val is None and "test rows are never used for validation" in caplog.text
