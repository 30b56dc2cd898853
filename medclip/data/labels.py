"""Label values: one explicit mapping from what corpora write to 1 / 0 / missing.

Every place that reads a label cell (importers, manifests, evaluation) goes through this module, so a
value means the same everywhere and an unreadable one is an error, never a silent NaN:

========================================  ==========================================
cell (case and surrounding space ignored)  value
========================================  ==========================================
``1``, ``1.0``, ``yes``, ``true``, ``y``,   1 (positive)
``t``, ``positive``, ``pos``
``0``, ``0.0``, ``no``, ``false``, ``n``,   0 (negative)
``f``, ``negative``, ``neg``
empty, ``nan``, ``na``, ``n/a``, ``none``,  missing (NaN: left out of that condition's metrics)
``null``
``-1``, ``-1.0``, ``uncertain``, ``u``      CheXpert's uncertain: ``labels.uncertain`` decides
                                            (``ones`` → 1, ``zeros`` → 0, ``ignore`` → missing)
========================================  ==========================================

Anything else (``2``, ``0.5``, ``maybe``) raises :class:`~medclip.errors.DataError` naming the column and
the unreadable values. Single-label columns hold class names instead (:func:`class_labels`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import ConfigError, DataError

UNCERTAIN_POLICIES = ("ones", "zeros", "ignore")
POSITIVE = frozenset({"1", "yes", "true", "y", "t", "positive", "pos"})
NEGATIVE = frozenset({"0", "no", "false", "n", "f", "negative", "neg"})
MISSING = frozenset({"", "nan", "na", "n/a", "none", "null"})
UNCERTAIN = frozenset({"-1", "uncertain", "u"})
EXPECTED = "expected 1/0, yes/no, true/false, -1 = uncertain, empty = missing"
_SHOWN = 5  # unreadable values listed in a message


@dataclass
class LabelConfig:
    """How label cells become numbers (recipe section ``labels:``).

    Attributes:
        uncertain: what a CheXpert-style uncertain value (``-1``) means: ``ones`` (positive, U-Ones),
            ``zeros`` (negative, U-Zeros) or ``ignore`` (missing: left out of that condition's metrics).
    """

    uncertain: str = "ignore"

    def __post_init__(self):
        check_policy(self.uncertain)


def check_policy(uncertain: str, key: str = "labels.uncertain") -> str:
    """Return ``uncertain`` when it is a known policy, else raise :class:`ConfigError` naming ``key``."""
    if uncertain not in UNCERTAIN_POLICIES:
        raise ConfigError(f"{key} must be one of {', '.join(UNCERTAIN_POLICIES)}, got '{uncertain}'")
    return uncertain


def normalize_cell(value) -> str:
    """A cell as a lower-case token: ``None``/NaN → ``""``, ``True`` → ``"1"``, ``1.0``/``"1.00"`` → ``"1"``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "1" if value else "0"
    text = str(value).strip().lower()
    try:
        number = float(text)
    except ValueError:
        return text
    if number.is_integer():
        return str(int(number))
    return "nan" if math.isnan(number) else text


def label_value(token: str, uncertain: str = "ignore") -> float | None:
    """The number a normalised cell means (NaN = missing), or ``None`` when it is unreadable."""
    if token in POSITIVE:
        return 1.0
    if token in NEGATIVE:
        return 0.0
    if token in MISSING:
        return math.nan
    if token in UNCERTAIN:
        return {"ones": 1.0, "zeros": 0.0, "ignore": math.nan}[uncertain]
    return None


def binary_labels(values: Iterable, column: str, uncertain: str = "ignore", positive: Sequence[str] = (),
                  where: str = "") -> np.ndarray:
    """One condition's cells as float32 1 / 0 / NaN (missing), per the table in the module docstring.

    Args:
        values: the column's cells (strings as read from CSV, numbers, booleans, None/NaN).
        column: the column's name (for the error message).
        uncertain: ``ones``, ``zeros`` or ``ignore`` (see :class:`LabelConfig`).
        positive: extra cell values meaning positive, e.g. the condition's own name.
        where: the file or table, prefixed to the error message.

    Raises:
        DataError: a cell is none of the known values (one line naming the column and the values).
        ConfigError: ``uncertain`` is not a known policy.
    """
    check_policy(uncertain)
    extra = {normalize_cell(p) for p in positive}
    series = pd.Series(list(values) if not isinstance(values, pd.Series) else values, dtype=object)
    mapping, bad = {}, []
    for cell in pd.unique(series):
        token = normalize_cell(cell)
        number = 1.0 if token in extra else label_value(token, uncertain)
        if number is None:
            bad.append(str(cell).strip())
        mapping[cell] = number
    if bad:
        raise DataError(_unreadable(where, column, bad, EXPECTED))
    if series.isna().any():  # NaN is never equal to itself: map it explicitly
        series = series.where(series.notna(), "")
        mapping[""] = mapping.get("", math.nan)
    return series.map(mapping).to_numpy(dtype=np.float32)


def class_labels(values: Iterable, column: str, classes: Mapping[str, Sequence[str]], where: str = "") -> np.ndarray:
    """A single-label column of class values as int64 class indices (-1 = missing, an empty cell).

    Args:
        values: the column's cells.
        column: the column's name (for the error message).
        classes: class name -> the cell values meaning that class, in class-index order (matched
            case-insensitively; an empty list means the class name itself).
        where: the file or table, prefixed to the error message.

    Raises:
        DataError: a non-empty cell names no class, or one value is listed under two classes.
    """
    lookup: dict[str, int] = {}
    for index, (name, names) in enumerate(classes.items()):
        for value in names or [name]:
            token = normalize_cell(value)
            if lookup.get(token, index) != index:
                raise DataError(f"{where + ': ' if where else ''}class value '{value}' belongs to two classes; "
                                "make the classes' values exclusive")
            lookup[token] = index
    series = pd.Series(list(values) if not isinstance(values, pd.Series) else values, dtype=object)
    tokens = series.map(normalize_cell)
    bad = sorted({str(c).strip() for c, t in zip(series, tokens) if t not in lookup and t not in MISSING})
    if bad:
        raise DataError(_unreadable(where, column, bad, f"expected one of {', '.join(classes)} or empty = missing"))
    return tokens.map(lambda t: lookup.get(t, -1)).to_numpy(dtype=np.int64)


def _unreadable(where: str, column: str, bad: list[str], expected: str) -> str:
    shown = ", ".join(repr(v) for v in sorted(bad)[:_SHOWN])
    more = f" and {len(bad) - _SHOWN} more" if len(bad) > _SHOWN else ""
    return f"{where + ': ' if where else ''}column '{column}' has unreadable label value(s) {shown}{more} ({expected})"
