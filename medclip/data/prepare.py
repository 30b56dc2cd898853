"""``medclip data prepare``: check, split and (optionally) preprocess a manifest ONCE, in parallel.

The manifest's rows are cut into slices: one per ``torchrun`` rank (when launched so), and each rank's
slice into one per worker process. Every worker loads and checks its rows (reports read, sections
extracted, images stat-ed or decoded, the preprocessing cache filled); rank 0 gathers the results,
quarantines duplicates across slices, splits leak-free (unless the manifest is split) and writes, as
the only writer:

* ``DIR/manifest.csv``: the good rows with their ``text`` (the report sections that feed the text
  tower) and ``split``, image paths relative to ``DIR``;
* ``DIR/quarantine.csv``: the rejected rows with their reason;
* ``DIR/prepared.json``: what was done, and the SHA-256 of ``manifest.csv``.

Training given ``data.manifest: DIR`` (or ``DIR/manifest.csv``) reads the prepared rows as they are and
never checks them again; if ``manifest.csv`` was edited since (hash mismatch) it stops with one line.
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import from_dict
from ..errors import DataError
from ..paths import file_sha256
from .config import ManifestColumns
from .csvsafe import unescape_frame, write_csv
from .manifest import QUARANTINE_COLUMNS, canonical_rows, check_manifest, read_manifest_table, row_lines

logger = logging.getLogger("medclip.data")
PREPARED, ROWS, QUARANTINE = "prepared.json", "manifest.csv", "quarantine.csv"
FORMAT = 1
MIN_ROWS_PER_WORKER = 2000  # below this a worker process costs more than it saves
_DROPPED = ("line", "image_raw", "report", "report_path", "report_error")


def parallel_map(fn, items: list, workers: int, chunksize: int = 1) -> list:
    """``[fn(x) for x in items]``, in ``workers`` processes when more than one (``fn`` must be picklable)."""
    if workers == 1:
        return [fn(x) for x in items]
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(fn, items, chunksize=chunksize))


def relative_paths(paths: list[str], folder: str | os.PathLike) -> list[str]:
    """Absolute ``paths`` relative to ``folder`` (one ``relpath`` for their common prefix: fast at 377k rows)."""
    paths = list(paths)
    full = [p for p in paths if p]
    if not full:
        return paths
    if not all(os.path.isabs(p) for p in (min(full), max(full))) or os.altsep:
        return [os.path.relpath(p, folder) if p else "" for p in paths]
    shared = os.path.commonprefix([min(full), max(full)])  # of the sorted extremes = of all (string prefix)
    common = shared[:shared.rfind(os.sep)] or os.sep  # back to a folder boundary
    prefix = os.path.relpath(common, folder)
    cut = len(common.rstrip(os.sep)) + 1
    return [(p[cut:] if prefix == "." else prefix + os.sep + p[cut:]) if p else "" for p in paths]


def _check_slice(job: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Load and check one slice of the manifest (runs in a worker process)."""
    decode = None
    if job["transform"]:  # preprocess once: decoding fills the cache that training reads
        from .transforms import build_image_transform

        options = dict(job["transform"])
        root = options.pop("cache_root", None)
        decode = build_image_transform(train=False, **options).set_cache_root(root).prepare
    df = canonical_rows(job["raw"], job["cols"], Path(job["root"]))
    df["line"] = job["lines"]  # file lines: a quoted multi-line report spans several
    return check_manifest(df, job["sections"], decode=decode, verify_images=job["verify"], reports=job["reports"])


def _slices(n: int, parts: int) -> list[tuple[int, int]]:
    bounds = np.linspace(0, n, parts + 1).astype(int)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def check_parallel(manifest: str | os.PathLike, columns=None, sections=("findings", "impression"),
                   verify_images: bool = False, transform: dict | None = None, workers: int | None = None,
                   rank: int = 0, world_size: int = 1) -> tuple[pd.DataFrame, pd.DataFrame, bool]:
    """Check this rank's slice of ``manifest`` over ``workers`` processes.

    Returns:
        ``(good rows, quarantine, has_reports)`` of this rank's slice (duplicates across slices are
        found by :func:`merge_checked`).
    """
    raw, cols = read_manifest_table(manifest, columns, reports=False)
    reports = cols.report in raw.columns or cols.report_path in raw.columns
    lo, hi = _slices(len(raw), world_size)[rank]
    lines = row_lines(manifest, len(raw))
    workers = max(1, min(workers or os.cpu_count() or 1, (hi - lo) // MIN_ROWS_PER_WORKER))
    jobs = [{"raw": raw.iloc[lo + a: lo + b], "cols": cols, "root": str(Path(manifest).resolve().parent),
             "lines": lines[lo + a: lo + b], "sections": sections, "verify": verify_images or bool(transform),
             "transform": transform, "reports": reports} for a, b in _slices(hi - lo, workers)]
    results = parallel_map(_check_slice, jobs, workers)
    good = pd.concat([g for g, _ in results], ignore_index=True)
    quarantine = pd.concat([q for _, q in results], ignore_index=True)
    return good, quarantine, reports


def merge_checked(parts: list[tuple[pd.DataFrame, pd.DataFrame]], reports: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Concatenate checked slices in line order and quarantine duplicates that span two slices."""
    good = pd.concat([g for g, _ in parts], ignore_index=True).sort_values("line", kind="stable")
    quarantine = pd.concat([q for _, q in parts], ignore_index=True)
    key = ["image", "text"] if reports else ["image"]
    dup = good.duplicated(key, keep="first").to_numpy()
    if dup.any():
        first = good[~dup].set_index(key)["line"]
        lines = [first.loc[tuple(k) if len(key) > 1 else k[0]] for k in good.loc[dup, key].itertuples(index=False)]
        what = "same image and report" if reports else "same image"
        extra = pd.DataFrame({"line": good.loc[dup, "line"].to_numpy(), "image": good.loc[dup, "image_raw"].to_numpy(),
                              "reason": [f"duplicate of line {int(n)} ({what})" for n in lines]})
        quarantine = pd.concat([quarantine, extra], ignore_index=True)
        good = good[~dup]
    quarantine = quarantine.sort_values("line", kind="stable").reset_index(drop=True)
    return good.reset_index(drop=True), quarantine.reindex(columns=QUARANTINE_COLUMNS)


def _split(good: pd.DataFrame, manifest, val: float, test: float, seed: int) -> tuple[pd.DataFrame, dict]:
    from .splits import given_splits, split_leak_free

    if given_splits(good, manifest):
        return good, {"given": True}
    return split_leak_free(good, val, test, seed), {"given": False, "val": val, "test": test, "seed": seed}


def write_prepared(good: pd.DataFrame, quarantine: pd.DataFrame, out_dir: str | os.PathLike, info: dict) -> dict:
    """Write ``manifest.csv``, ``quarantine.csv`` and ``prepared.json`` (with the manifest's hash) to ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = good.drop(columns=[c for c in _DROPPED if c in good.columns])
    rows.insert(0, "source_line", good["line"].to_numpy())
    rows["image"] = relative_paths(rows["image"], out.resolve())
    tmp = out / (ROWS + ".tmp")
    write_csv(rows, tmp, keep=info.get("labels", ()))
    os.replace(tmp, out / ROWS)
    write_csv(quarantine, out / QUARANTINE)
    info = {"format": FORMAT, **info, "rows": len(rows), "quarantined": len(quarantine),
            "splits": {k: int(v) for k, v in rows["split"].value_counts().items()},
            "manifest_sha256": file_sha256(out / ROWS)}
    (out / PREPARED).write_text(json.dumps(info, indent=2))
    return info


def prepared_dir(manifest: str | os.PathLike) -> Path | None:
    """The prepared folder ``manifest`` names (the folder, or its ``manifest.csv``), else None."""
    path = Path(manifest)
    folder = path if path.is_dir() else path.parent
    if (folder / PREPARED).is_file() and (path.is_dir() or path.name == ROWS):
        return folder
    return None


def read_prepared(folder: str | os.PathLike) -> tuple[pd.DataFrame, dict]:
    """The prepared rows (absolute image paths, ``text``, ``split``), after checking the content hash.

    Raises:
        DataError: ``manifest.csv`` no longer matches the hash ``prepare`` wrote (one line; prepare again).
    """
    folder = Path(folder)
    info = json.loads((folder / PREPARED).read_text())
    if file_sha256(folder / ROWS) != info.get("manifest_sha256"):
        raise DataError(f"{folder / ROWS}: changed since 'medclip data prepare' wrote it (content hash differs "
                        f"from {PREPARED}); run 'medclip data prepare' again")
    df = unescape_frame(pd.read_csv(folder / ROWS, dtype=str, keep_default_na=False, encoding="utf-8"))
    base = str(folder.resolve())
    df["image"] = [os.path.normpath(os.path.join(base, p)) for p in df["image"]]
    df["line"] = df["source_line"].astype(int)
    for label in info.get("labels", []):
        df[label] = pd.to_numeric(df[label].replace("", "nan")).astype("float32")
    return df, info


def _dist() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def prepare(manifest: str | os.PathLike, out_dir: str | os.PathLike, columns=None,
            sections=("findings", "impression"), split: tuple = (0.1, 0.1, 0), verify_images: bool = False,
            transform: dict | None = None, workers: int | None = None) -> dict | None:
    """Check, split and optionally preprocess ``manifest`` once into ``out_dir`` (see the module docstring).

    Under an initialised ``torch.distributed`` process group each rank checks its slice; rank 0 merges
    and is the only one to write. Every rank returns after the files exist (or raises rank 0's error).

    Args:
        manifest: the manifest CSV.
        out_dir: the prepared folder.
        columns: the manifest's column names (:class:`~medclip.data.config.ManifestColumns` or dict).
        sections: report sections used as text (None: the whole report).
        split: ``(val, test, seed)`` of the leak-free split when the manifest has no split column.
        verify_images: decode every image (otherwise: exists, is a file, not empty).
        transform: keyword arguments of :func:`~medclip.data.transforms.build_image_transform`
            (``vision_config``, ``resize``, ``cache_dir``, ...): decode each image once into that cache.
        workers: processes per rank (default: all cores).

    Returns:
        The ``prepared.json`` content on rank 0, None on the other ranks.
    """
    rank, world = _dist()
    good, quarantine, reports = check_parallel(manifest, columns, sections, verify_images, transform, workers,
                                               rank, world)
    parts = [(good, quarantine)]
    if world > 1:
        import torch.distributed as dist

        gathered = [None] * world if rank == 0 else None
        dist.gather_object((good, quarantine), gathered, dst=0)
        parts = gathered
    info, error = None, None
    if rank == 0:
        try:
            info = _merge_and_write(parts, reports, manifest, out_dir, columns, sections, split, transform)
        except DataError as exc:
            error = str(exc)
    if world > 1:
        import torch.distributed as dist

        box = [error]
        dist.broadcast_object_list(box, src=0)
        error = box[0]
    if error:
        raise DataError(error)
    return info


def _merge_and_write(parts, reports, manifest, out_dir, columns, sections, split, transform) -> dict:
    good, quarantine = merge_checked(parts, reports)
    if good.empty:
        raise DataError(f"{manifest}: no usable rows (all {len(quarantine)} quarantined)")
    good, split_info = _split(good, manifest, *split)
    cols = columns if isinstance(columns, ManifestColumns) else from_dict(ManifestColumns, columns, "data.columns")
    info = {"source": str(Path(manifest).resolve()), "source_sha256": file_sha256(manifest), "reports": reports,
            "sections": list(sections) if sections else None, "split": split_info, "labels": list(cols.labels),
            "transform": _describe(transform)}
    info = write_prepared(good, quarantine, out_dir, info)
    logger.info("prepared %s: %d rows ok, %d quarantined -> %s", manifest, info["rows"], info["quarantined"], out_dir)
    return info


def _describe(transform: dict | None) -> dict | None:
    if not transform:
        return None
    vision = transform.get("vision_config")
    out = {k: v for k, v in transform.items() if k != "vision_config"}
    if vision is not None:
        out.update(image_size=int(vision.image_size), in_chans=int(vision.in_chans))
    return out
