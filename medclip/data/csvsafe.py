"""CSV files that are safe to open in a spreadsheet, and read back unchanged as manifests.

A text cell that begins with ``=``, ``+``, ``-`` or ``@`` is run as a formula by Excel/LibreOffice
(CSV injection: report text such as ``=HYPERLINK(...)`` or ``-2+3`` becomes live). Every CSV that
medclip writes goes through :func:`write_csv`, which prefixes such cells with one ``'`` (the
spreadsheet convention for "text"). Numbers (``-1``, ``-0.3``, a negative logit) and the columns named
in ``keep`` (label values) are never touched. A cell that already starts with ``'`` followed by one of
those characters gets one more ``'``, so that :func:`unescape_frame` (used when a CSV is read back as a
manifest) restores every value exactly.
"""

from __future__ import annotations

import os

import pandas as pd

FORMULA_START = ("=", "+", "-", "@")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _is_text(series: pd.Series) -> bool:
    return pd.api.types.is_object_dtype(series) or pd.api.types.is_string_dtype(series)


def escape_cell(value):
    """``value`` with a leading ``'`` when a spreadsheet would run it as a formula; anything else as is."""
    if not isinstance(value, str) or not value:
        return value
    if value.startswith(FORMULA_START) and not _is_number(value):
        return "'" + value
    if value.startswith("'") and escape_cell(value[1:]) != value[1:]:
        return "'" + value  # an escaped-looking value: escape it too, so reading back is exact
    return value


def unescape_cell(value):
    """Inverse of :func:`escape_cell`: drop the one leading ``'`` that :func:`escape_cell` added."""
    if isinstance(value, str) and value.startswith("'") and escape_cell(value[1:]) == value:
        return value[1:]
    return value


def escape_frame(df: pd.DataFrame, keep=()) -> pd.DataFrame:
    """A copy of ``df`` whose text cells are escaped (columns in ``keep`` and non-text columns unchanged)."""
    out = df.copy()
    for column in out.columns:
        if column not in keep and _is_text(out[column]):
            out[column] = out[column].map(escape_cell)
    return out


def unescape_frame(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` (read from a CSV medclip wrote) with the spreadsheet escapes removed from its text cells."""
    for column in df.columns:
        if _is_text(df[column]):
            df[column] = df[column].map(unescape_cell)
    return df


def write_csv(df: pd.DataFrame, path: str | os.PathLike, keep=(), **kwargs) -> None:
    """``df.to_csv(path, index=False)`` with formula-like text cells escaped (see the module docstring).

    Args:
        df: the table.
        path: the CSV file.
        keep: columns never escaped (label values).
        **kwargs: passed to :meth:`pandas.DataFrame.to_csv`.
    """
    escape_frame(df, keep).to_csv(path, index=False, **kwargs)
