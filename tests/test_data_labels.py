"""The one label-value mapping (medclip.data.labels): every spelling, the uncertain policy, loud errors."""

import math

import numpy as np
import pytest

from medclip.config import from_dict
from medclip.data.labels import LabelConfig, binary_labels, class_labels, normalize_cell
from medclip.errors import ConfigError, DataError


def _same(got, want):
    np.testing.assert_array_equal(np.isnan(got), np.isnan(np.array(want, dtype=float)))
    np.testing.assert_array_equal(np.nan_to_num(got, nan=9), np.nan_to_num(np.array(want, dtype=float), nan=9))


def test_every_spelling_maps_to_one_value():
    cells = ["1", "1.0", " Yes", "TRUE", "positive", "0", "0.0", "no", "False", "", "nan", None, math.nan,
             1, 0.0, True, False]
    _same(binary_labels(cells, "Edema"), [1, 1, 1, 1, 1, 0, 0, 0, 0, np.nan, np.nan, np.nan, np.nan, 1, 0, 1, 0])
    assert binary_labels(cells, "Edema").dtype == np.float32


@pytest.mark.parametrize("policy,want", [("ones", 1.0), ("zeros", 0.0), ("ignore", np.nan)])
def test_uncertain_policy(policy, want):
    got = binary_labels(["-1", "-1.0", -1, "uncertain", "1", "0"], "Atelectasis", uncertain=policy)
    _same(got, [want] * 4 + [1, 0])


def test_class_name_as_positive_value():
    _same(binary_labels(["Pneumonia", "", "0"], "finding", positive=["pneumonia"]), [1, np.nan, 0])


def test_unreadable_values_are_one_line_error_naming_column_and_values():
    with pytest.raises(DataError) as err:
        binary_labels(["1", "2", "maybe", "0.5", "0"], "Edema", where="train.csv")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("train.csv: column 'Edema'")
    assert "'2'" in msg and "'maybe'" in msg and "'0.5'" in msg and "'1'" not in msg.split("(")[0]


def test_many_unreadable_values_are_summarised():
    with pytest.raises(DataError, match="and 5 more"):
        binary_labels([f"v{i}" for i in range(10)], "c")


def test_policy_is_checked():
    with pytest.raises(ConfigError, match="labels.uncertain must be one of ones, zeros, ignore"):
        binary_labels(["1"], "c", uncertain="maybe")
    assert from_dict(LabelConfig, {"uncertain": "zeros"}, "labels").uncertain == "zeros"
    with pytest.raises(ConfigError):
        from_dict(LabelConfig, {"uncertain": "twos"}, "labels")


def test_class_labels():
    classes = {"NORMAL": ["normal", "0"], "PNEUMONIA": []}
    np.testing.assert_array_equal(class_labels(["Normal", "0", "pneumonia", "", None], "finding", classes),
                                  [0, 0, 1, -1, -1])
    with pytest.raises(DataError, match="column 'finding' has unreadable label value.*'covid'"):
        class_labels(["normal", "covid"], "finding", classes)
    with pytest.raises(DataError, match="belongs to two classes"):
        class_labels(["a"], "finding", {"A": ["x"], "B": ["X"]})


def test_normalize_cell():
    assert [normalize_cell(v) for v in ("1.00", " -1.0 ", "Yes", 2.5, None)] == ["1", "-1", "yes", "2.5", ""]


def test_large_column_is_fast_and_exact():
    cells = np.random.default_rng(0).choice(np.array(["1.0", "0.0", "", "-1.0"], dtype=object), 200_000)
    got = binary_labels(cells, "c", uncertain="ones")
    want = np.where(cells == "", np.nan, np.where(cells == "0.0", 0.0, 1.0))
    _same(got, want)
