"""Label values reach the metrics explicitly mapped, or stop with one line naming the column and values.

The three silent-wrong-metric cases of issue 14 (0/1 labels with a NORMAL/PNEUMONIA class file, yes/no
values, a value 2), CheXpert's -1 under each ``uncertain`` policy, a condition without a column, and a
condition whose AUROC is undefined (named, never silently dropped from the macro).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medclip.cli import main
from medclip.errors import ConfigError, DataError
from medclip.eval.prompts import parse_class_file
from medclip.eval.task import Task

KERMANY = "recipes/classes/pneumonia-kermany.yaml"
MULTI = {"task": "multi", "classes": {"effusion": ["pleural effusion"], "edema": ["pulmonary edema"]}}


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, tiny_model):
    folder = tmp_path_factory.mktemp("labels_model")
    tiny_model.save_pretrained(str(folder))
    return str(folder)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[str]:
    from PIL import Image

    folder = tmp_path_factory.mktemp("label_images")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(8):
        path = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def run(saved_model, manifest, classes, capsys, *extra) -> tuple[int, str, str]:
    code = main(["zeroshot", "--model", saved_model, "--manifest", str(manifest), "--classes", str(classes),
                 "--bootstrap", "20", "--no-figures", "--no-cache", *extra])
    out, err = capsys.readouterr()
    return code, out, err


def write(tmp_path, images, **columns) -> str:
    path = tmp_path / "manifest.csv"
    pd.DataFrame({"image": images, "patient_id": [f"p{i}" for i in range(len(images))], **columns}).to_csv(
        path, index=False)
    return str(path)


@pytest.mark.slow
def test_codes_with_a_class_name_file_stop_with_the_column_and_values(saved_model, images, tmp_path, capsys):
    """Was: "0 evaluated", exit 0."""
    manifest = write(tmp_path, images, label=[0, 1] * 4)
    code, out, err = run(saved_model, manifest, KERMANY, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "column 'label'" in err and "'0', '1'" in err and "values" in err
    classes = tmp_path / "codes.yaml"  # the fix the message names: the codes as each class's values
    classes.write_text("label_column: label\nclasses:\n  NORMAL: {prompts: [normal lungs], values: [0]}\n"
                       "  PNEUMONIA: {prompts: [pneumonia], values: [1]}\n")
    code, out, err = run(saved_model, manifest, classes, capsys)
    assert code == 0 and "8 evaluated" in out
    assert "nothing saved (no --output)" in out  # a command says where its outputs went, or that none were kept


def test_yes_no_true_false_are_read_and_every_condition_is_scored(saved_model, images, tmp_path, capsys):
    """Was: AUROC nan for the yes/no condition and a macro over the rest."""
    classes = tmp_path / "multi.yaml"
    classes.write_text("task: multi\nclasses:\n  effusion: [pleural effusion]\n  edema: [pulmonary edema]\n")
    manifest = write(tmp_path, images, effusion=["yes", "no", "Yes", "NO"] * 2, edema=["true", "false"] * 4)
    code, out, err = run(saved_model, manifest, classes, capsys, "--output", str(tmp_path / "out"))
    assert code == 0, err
    table = pd.read_csv(tmp_path / "out" / "probabilities.csv")
    np.testing.assert_array_equal(table["label/effusion"], [1, 0, 1, 0] * 2)
    np.testing.assert_array_equal(table["label/edema"], [1, 0] * 4)
    assert "nan" not in out and "undefined" not in out and "AUROC macro " in out


@pytest.mark.parametrize("value", ["2", "maybe", "0.5"])
def test_an_unreadable_value_is_one_line_naming_column_and_value(saved_model, images, tmp_path, capsys, value):
    """Was (value 2): an sklearn traceback."""
    classes = tmp_path / "multi.yaml"
    classes.write_text("task: multi\nclasses:\n  effusion: [pleural effusion]\n  edema: [pulmonary edema]\n")
    manifest = write(tmp_path, images, effusion=["1", "0", value, "1"] * 2, edema=["1", "0"] * 4)
    code, out, err = run(saved_model, manifest, classes, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "column 'effusion'" in err and repr(value) in err


@pytest.mark.parametrize("policy, expected", [("ignore", np.nan), ("ones", 1.0), ("zeros", 0.0)])
def test_chexpert_uncertain_follows_the_stated_policy(policy, expected):
    cf = parse_class_file({**MULTI, "uncertain": policy})
    df = pd.DataFrame({"effusion": ["-1", "1", "", "0"], "edema": ["-1.0", "0", "1", "uncertain"]})
    labels = Task.from_class_file(cf).manifest_labels(df)
    np.testing.assert_array_equal(labels["label/effusion"], [expected, 1, np.nan, 0])
    np.testing.assert_array_equal(labels["label/edema"], [expected, 0, 1, expected])
    with pytest.raises(ConfigError, match="uncertain must be one of"):
        parse_class_file({**MULTI, "uncertain": "maybe"}, "my.yaml")


def test_a_condition_without_a_column_is_an_error_not_a_smaller_macro():
    task = Task.from_class_file(parse_class_file(MULTI))
    with pytest.raises(DataError, match=r"no label column for \['edema'\]"):
        task.manifest_labels(pd.DataFrame({"effusion": ["1", "0"]}), "m.csv")
    unlabelled = task.manifest_labels(pd.DataFrame({"image": ["a", "b"]}))  # no label column at all: inference
    assert np.isnan(unlabelled["label/edema"]).all() and np.isnan(unlabelled["label/effusion"]).all()


@pytest.mark.slow
def test_an_undefined_auroc_is_named_and_the_macro_says_over_how_many(saved_model, images, tmp_path, capsys):
    classes = tmp_path / "multi.yaml"
    classes.write_text("task: multi\nclasses:\n  effusion: [pleural effusion]\n  edema: [pulmonary edema]\n")
    manifest = write(tmp_path, images, effusion=["1", "0"] * 4, edema=["0"] * 8)  # edema: no positive
    code, out, err = run(saved_model, manifest, classes, capsys)
    assert code == 0
    assert "edema" in out and "undefined" in out and "macro (1 of 2)" in out
    assert "AUROC undefined for edema" in err
