"""``medclip data shard``: WebDataset tar shards of preprocessed images, report text, labels and ids.

One sample per good row of a split (default ``train``), in a seeded random order across shards (so a
shard mixes patients), written with the ``webdataset`` library's ``TarWriter`` (the format open_clip
trains on at LAION scale)::

    000000.tar: 000000042.npy  (C, H, W) uint8 / uint16 — the cache's stored form (medclip.data.stored)
                000000042.txt  the report sections that feed the text tower
                000000042.json {"line": 42, "patient_id": ..., "study_id": ..., "image": ..., "labels": {...}}

``shards.json`` beside the tars lists every shard with its sample count (readers need the counts to give
every rank the same number of samples) plus the transform and split it was made with. Recipes read the
shards with ``data.shards: "DIR/{000000..000377}.tar"``.
"""

from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path

import numpy as np

from ..errors import DataError
from .prepare import parallel_map, prepared_dir, read_prepared

logger = logging.getLogger("medclip.data")
INDEX = "shards.json"


def _rows(manifest: str | os.PathLike, split: str, columns=None, sections=("findings", "impression")):
    """Good rows of ``split`` (a prepared folder is read as is; a plain manifest is checked first) + labels."""
    folder = prepared_dir(manifest)
    if folder is not None:
        rows, info = read_prepared(folder)
        labels = info.get("labels", [])
    else:
        from .manifest import check_manifest, load_manifest

        df = load_manifest(manifest, columns)
        rows, _ = check_manifest(df, sections, verify_images=False)
        labels = list(getattr(columns, "labels", None) or (columns or {}).get("labels", []))
        if split != "all" and (rows["split"] == "").all():
            raise DataError(f"{manifest}: no split column; run 'medclip data prepare' first (or --split all)")
    if split != "all":
        rows = rows[rows["split"] == split]
    if rows.empty:
        raise DataError(f"{manifest}: no good rows in split '{split}' to shard")
    return rows.reset_index(drop=True), labels


def _encode_npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _write_one(job: dict) -> tuple[str, int]:
    """Write one shard (runs in a worker process): preprocess each image once, store it quantised."""
    import webdataset as wds

    from .transforms import build_image_transform

    options = dict(job["transform"])
    root = options.pop("cache_root", None)
    transform = build_image_transform(train=False, **options).set_cache_root(root)
    path = Path(job["path"])
    tmp = path.with_suffix(".tar.tmp")
    with wds.TarWriter(str(tmp)) as sink:
        for row in job["rows"]:
            labels = {k: (None if v != v else float(v)) for k, v in row["labels"].items()}
            meta = {"line": row["line"], "patient_id": row["patient_id"], "study_id": row["study_id"],
                    "image": row["image_rel"], "labels": labels}
            sink.write({"__key__": f"{row['line']:09d}", "npy": _encode_npy(transform.prepare_stored(row["image"])),
                        "txt": row["text"], "json": json.dumps(meta).encode()})
    os.replace(tmp, path)
    return path.name, len(job["rows"])


def write_shards(manifest: str | os.PathLike, out_dir: str | os.PathLike, transform: dict, split: str = "train",
                 shard_size: int = 1000, seed: int = 0, workers: int | None = None) -> dict:
    """Write the rows of ``split`` as tar shards into ``out_dir`` with ``shards.json``.

    Args:
        manifest: a prepared folder (``medclip data prepare``) or a manifest CSV with a split column.
        out_dir: the shard folder.
        transform: keyword arguments of :func:`~medclip.data.transforms.build_image_transform`
            (``vision_config``, ``resize``, ``cache_dir``, ...).
        split: ``train``, ``val``, ``test`` or ``all``.
        shard_size: samples per shard (the last one may hold fewer).
        seed: the order of the samples across shards.
        workers: processes writing shards in parallel (default: all cores).

    Returns:
        The index written to ``shards.json``.
    """
    rows, labels = _rows(manifest, split)
    order = np.random.default_rng(seed).permutation(len(rows))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = str(Path(prepared_dir(manifest) or Path(manifest).resolve().parent).resolve())
    records = [{"line": int(r.line), "image": r.image, "image_rel": os.path.relpath(r.image, base), "text": r.text,
                "patient_id": str(r.patient_id), "study_id": str(getattr(r, "study_id", "")),
                "labels": {k: float(rows.at[i, k]) for k in labels}}
               for i, r in zip(order, (rows.iloc[j] for j in order))]
    jobs = [{"path": str(out / f"{k:06d}.tar"), "rows": records[a:a + shard_size], "transform": transform}
            for k, a in enumerate(range(0, len(records), shard_size))]
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    written = parallel_map(_write_one, jobs, workers)
    vision = transform.get("vision_config")
    index = {"format": 1, "split": split, "seed": seed, "samples": len(records), "labels": labels,
             "image_size": int(vision.image_size), "in_chans": int(vision.in_chans),
             "resize": transform.get("resize", "pad"), "shards": [{"name": n, "samples": c} for n, c in written],
             "pattern": f"{out}/{{000000..{len(jobs) - 1:06d}}}.tar"}
    (out / INDEX).write_text(json.dumps(index, indent=2))
    logger.info("wrote %d samples in %d shards to %s", len(records), len(jobs), out)
    return index


def read_index(path: str | os.PathLike) -> dict:
    """A ``shards.json`` index (one-line error when missing or unreadable)."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: shard index not found (written by 'medclip data shard' beside the shards); "
                        "set data.shards_index") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable shard index ({exc})") from None

