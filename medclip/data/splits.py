"""Leak-free train/val/test splits.

Rows that share a patient id OR an image file belong together (connected components: real corpora
list one image under two patient ids). Rows without a patient id are their own patient. Whole
components are assigned to splits, so no patient and no image appears in two splits.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import DataError


def leak_groups(df: pd.DataFrame) -> np.ndarray:
    """Component id per row: rows linked by a shared non-empty ``patient_id`` or the same ``image``."""
    parent = list(range(len(df)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for column in ("patient_id", "image"):
        first: dict[str, int] = {}
        for i, key in enumerate(df[column].astype(str)):
            if not key:
                continue
            if key in first:
                a, b = find(i), find(first[key])
                if a != b:
                    parent[a] = b
            else:
                first[key] = i
    roots = [find(i) for i in range(len(df))]
    _, ids = np.unique(roots, return_inverse=True)
    return ids


def split_leak_free(df: pd.DataFrame, val: float = 0.1, test: float = 0.1, seed: int = 0) -> pd.DataFrame:
    """Add a ``split`` column (train/val/test) assigning whole patient/image components.

    Components are shuffled with ``seed`` and fill ``test`` then ``val`` up to their fraction of rows
    (each overshoots by at most one component); the rest is ``train``. With at least three components
    and non-zero fractions, val and test each get at least one.

    Args:
        df: rows with ``patient_id`` and ``image`` columns.
        val: fraction of rows for validation.
        test: fraction of rows for test.
        seed: shuffling seed (same seed, same rows → same split).

    Returns:
        A copy of ``df`` with the ``split`` column (replacing any existing one).
    """
    out = df.copy()
    groups = leak_groups(out)
    sizes = np.bincount(groups)
    order = np.random.default_rng(seed).permutation(len(sizes))
    targets = {"test": test * len(out), "val": val * len(out)}
    counts = {"test": 0, "val": 0}
    assign = np.empty(len(sizes), dtype=object)
    for g in order:
        split = next((s for s in ("test", "val") if targets[s] > 0 and counts[s] < targets[s]), "train")
        assign[g] = split
        if split != "train":
            counts[split] += int(sizes[g])
    out["split"] = assign[groups]
    return out


def carve_validation(df: pd.DataFrame, val: float = 0.1, seed: int = 0) -> pd.DataFrame:
    """Move a ``val`` fraction of the **training** rows (whole patient/image components) into a ``val`` split.

    For manifests that give train/test but no validation split: validation must never touch the test
    patients, so it is carved out of the training ones. Other splits are left as they are.
    """
    out = df.copy()
    train = (out["split"] == "train").to_numpy()
    part = split_leak_free(out.loc[train, ["image", "patient_id"]], val=val, test=0.0, seed=seed)
    out.loc[train, "split"] = part["split"].to_numpy()
    return out


def check_splits(df: pd.DataFrame) -> None:
    """Raise when a given ``split`` column leaks: one patient or image (component) in several splits.

    Args:
        df: manifest rows with ``split``, ``patient_id`` and ``image`` columns (empty splits are ignored).

    Raises:
        DataError: naming the first leaking patient/image, its splits and manifest lines.
    """
    given = df[df["split"].astype(str) != ""]
    if given.empty:
        return
    groups = leak_groups(given)
    for g in np.unique(groups):
        rows = given[groups == g]
        if rows["split"].nunique() > 1:
            pids = sorted({p for p in rows["patient_id"] if p})
            who = f"patient {pids[0]!r}" if pids else f"image {rows['image_raw'].iloc[0]!r}"
            lines = ", ".join(str(v) for v in rows.get("line", rows.index)[:6])
            raise DataError(f"{who} is in splits {', '.join(sorted(rows['split'].unique()))} (lines {lines}): "
                            f"the given splits leak; fix the split column or delete it to split leak-free")


def given_splits(df: pd.DataFrame, manifest) -> bool:
    """Whether the manifest's ``split`` column is filled on every row (then checked) or on none.

    Args:
        df: the good manifest rows (``split`` empty where not given).
        manifest: the manifest's path, for the error message.

    Returns:
        bool: True when every row has a split (checked leak-free), False when no row has one (split it).

    Raises:
        DataError: the column is filled on some rows only, or the given splits leak.
    """
    given = df["split"] != ""
    if len(df) and given.all():
        check_splits(df)
        return True
    if given.any():
        raise DataError(f"{manifest}: split column is empty on {int((~given).sum())} of {len(df)} good rows; "
                        "fill it everywhere or delete it to split leak-free")
    return False
