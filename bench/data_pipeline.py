"""Data pipeline at MIMIC scale, on synthetic data this script makes (no MIMIC data exists here).

    python bench/data_pipeline.py [--quick] [--rows 377110] [--keep DIR]

1. check + split: ``medclip data prepare`` (all cores) of a MIMIC-CXR-layout manifest (377,110 rows,
   ~1.65 images per report, ``files/pXX/pNNNNNNNN/sNNNNNNNN/*.jpg`` placeholders + report files), no
   image decoding, done once (not per rank). Target <= 60 s.
2. shard read vs per-file: images/s of reading 224² uint8 samples from WebDataset shards (decode npy,
   normalise, tokenise: what training consumes) vs per-file decode + resize of MIMIC-sized JPEGs
   (2544x3056) through the same pipeline without cache, interleaved. Target >= 10x.
3. first-pass DICOM vs raw pydicom: MIMIC-sized 12-bit uncompressed DICOMs (2544x3056); medclip's first
   pass (decode, LUTs, resize, quantise) vs ``pydicom.dcmread(path).pixel_array``, interleaved. Target >= 0.8x.
4. cache bytes per 1-channel 224² uint8 image. Target <= 50 KiB.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine_line  # noqa: E402

MIMIC_ROWS = 377_110


def make_mimic_layout(root: Path, rows: int, seed: int = 0) -> Path:
    """Placeholder MIMIC-CXR-JPG tree (1-byte images, short reports) and its manifest; returns the manifest."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    out, subject, study = [], 10_000_000, 50_000_000
    while len(out) < rows:
        subject += 1
        patient = root / "files" / f"p{str(subject)[:2]}" / f"p{subject}"
        for _ in range(int(rng.integers(1, 6))):
            study += 1
            (patient / f"s{study}").mkdir(parents=True, exist_ok=True)
            report = patient / f"s{study}.txt"
            report.write_text(f"FINDINGS: Lungs are clear {study % 997}. IMPRESSION: No acute process {study % 13}.")
            for k in range(min(rows - len(out), 1 + int(rng.random() < 0.65))):
                image = patient / f"s{study}" / f"{study:08x}-{k}.jpg"
                image.write_bytes(b"x")
                out.append((str(image.relative_to(root)), str(report.relative_to(root)), str(subject), str(study)))
            if len(out) >= rows:
                break
    pd.DataFrame(out, columns=["image", "report_path", "patient_id", "study_id"]).to_csv(root / "manifest.csv",
                                                                                          index=False)
    return root / "manifest.csv"


def bench_prepare(tmp: Path, rows: int) -> dict:
    from medclip.data.prepare import prepare

    start = time.perf_counter()
    manifest = make_mimic_layout(tmp / "mimic", rows)
    made = time.perf_counter() - start
    start = time.perf_counter()
    info = prepare(manifest, tmp / "prepared", workers=os.cpu_count())
    seconds = time.perf_counter() - start
    return {"rows": rows, "made_s": made, "seconds": seconds, "ok": info["rows"], "splits": info["splits"]}


def _radiograph(seed: int, h: int = 3056, w: int = 2544, top: int = 255) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    img = (yy / h * 0.6 + xx / w * 0.3) + rng.normal(0, 0.02, (h, w)).astype(np.float32)
    return np.clip(img, 0, 1) * top


def _interleaved(pairs, files, reps: int) -> list[float]:
    """Median seconds per call of each function, alternating them file by file."""
    times = [[] for _ in pairs]
    for _ in range(reps):
        for path in files:
            for k, fn in enumerate(pairs):
                start = time.perf_counter()
                fn(path)
                times[k].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def bench_shards(tmp: Path, n_jpeg: int, n_samples: int) -> dict:
    import io

    import webdataset as wds
    from PIL import Image

    import medclip
    from medclip.config import VisionConfig
    from medclip.data.config import DataConfig
    from medclip.data.source import ShardSource
    from medclip.data.transforms import build_image_transform

    vision = VisionConfig(image_size=224, in_chans=1)
    jpegs = []
    for i in range(n_jpeg):
        path = tmp / "jpeg" / f"{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_radiograph(i).astype(np.uint8)).save(path, quality=95)
        jpegs.append(str(path))
    per_file = build_image_transform(vision, train=True, augment=False)
    (file_s,) = _interleaved([per_file], jpegs, 2)
    folder = tmp / "shards"
    folder.mkdir()
    rng = np.random.default_rng(0)
    shards = []
    for k in range(0, n_samples, 500):
        name = f"{k // 500:06d}.tar"
        with wds.TarWriter(str(folder / name)) as sink:
            for line in range(k, min(n_samples, k + 500)):
                buf = io.BytesIO()
                np.save(buf, rng.integers(0, 256, (1, 224, 224), dtype=np.uint8), allow_pickle=False)
                sink.write({"__key__": f"{line:09d}", "npy": buf.getvalue(), "json": (
                    f'{{"line": {line}, "patient_id": "p", "study_id": "s", "image": "x", "labels": {{}}}}').encode(),
                    "txt": b"FINDINGS: Lungs are clear. IMPRESSION: No acute cardiopulmonary process."})
        shards.append({"name": name, "samples": min(n_samples, k + 500) - k})
    import json

    (folder / "shards.json").write_text(json.dumps({"image_size": 224, "in_chans": 1, "labels": [],
                                                    "shards": shards}))
    config = DataConfig(shards=str(folder / f"{{000000..{len(shards) - 1:06d}}}.tar"), augment=False)
    source = ShardSource(config, vision, medclip.get_tokenizer("ViT-B-32"), 50, 0, 0, 1)
    start = time.perf_counter()
    seen = sum(len(batch["path"]) for batch in source.epoch_loader(0))
    shard_rate = seen / (time.perf_counter() - start)
    return {"file_rate": 1 / file_s, "shard_rate": shard_rate, "ratio": shard_rate * file_s}


def _write_dicom(path: Path, seed: int) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.ViewPosition, ds.PhotometricInterpretation = "DX", "PA", "MONOCHROME2"
    arr = _radiograph(seed, top=4095).astype(np.uint16)
    ds.Rows, ds.Columns, ds.SamplesPerPixel = arr.shape[0], arr.shape[1], 1
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.PixelData = arr.tobytes()
    ds.save_as(path, enforce_file_format=True)


def bench_dicom(tmp: Path, n: int) -> dict:
    import pydicom

    from medclip.config import VisionConfig
    from medclip.data.transforms import build_image_transform

    files = []
    for i in range(n):
        path = tmp / "dicom" / f"{i}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_dicom(path, i)
        files.append(str(path))
    first = build_image_transform(VisionConfig(image_size=224, in_chans=1))
    raw_s, first_s = _interleaved([lambda p: pydicom.dcmread(p).pixel_array, first], files, 2)
    return {"raw_rate": 1 / raw_s, "first_rate": 1 / first_s, "ratio": raw_s / first_s}


def bench_cache(tmp: Path) -> int:
    from medclip.config import VisionConfig
    from medclip.data.transforms import build_image_transform

    tf = build_image_transform(VisionConfig(image_size=224, in_chans=1), cache_dir=str(tmp / "cache"))
    tf.prepare(str(tmp / "jpeg" / "0.jpg"))
    return next((tmp / "cache").rglob("*.npy")).stat().st_size


def _run_part(part: str, tmp: Path, quick: bool, rows: int) -> str:
    """Run one part of the benchmark; its result line."""
    if part == "shards":
        r = bench_shards(tmp, 3 if quick else 6, 1000 if quick else 3000)
        return (f"shard read 224² uint8: {r['shard_rate']:.0f} images/s vs per-file JPEG 2544x3056 decode+resize "
                f"{r['file_rate']:.1f} images/s = {r['ratio']:.0f}x  target >= 10x: "
                f"{'yes' if r['ratio'] >= 10 else 'no'}")
    if part == "dicom":
        r = bench_dicom(tmp, 3 if quick else 6)
        return (f"first-pass DICOM 2544x3056 12-bit: {r['first_rate']:.1f} images/s vs raw pydicom "
                f"{r['raw_rate']:.1f} images/s = {r['ratio']:.2f}x  target >= 0.8x: "
                f"{'yes' if r['ratio'] >= 0.8 else 'no'}")
    if part == "cache":
        size = bench_cache(tmp)
        return (f"cache per 1x224² uint8 image: {size} bytes ({size / 1024:.1f} KiB)  target <= 50 KiB: "
                f"{'yes' if size <= 50 * 1024 else 'no'}")
    r = bench_prepare(tmp, rows)
    return (f"check + split (prepare, {os.cpu_count()} cores, once): {r['rows']} rows in {r['seconds']:.1f} s "
            f"({r['rows'] / r['seconds']:.0f} rows/s; synthetic tree made in {r['made_s']:.0f} s), "
            f"splits {r['splits']}  target <= 60 s: {'yes' if r['seconds'] <= 60 else 'no'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="50k rows, fewer images (about a minute)")
    parser.add_argument("--rows", type=int, default=None, help=f"manifest rows (default {MIMIC_ROWS})")
    parser.add_argument("--keep", help="make the synthetic data in this folder and keep it")
    parser.add_argument("--only", choices=("shards", "dicom", "cache", "prepare"), action="append",
                        help="run only these parts (repeatable; cache needs shards' JPEGs)")
    args = parser.parse_args(argv)
    parts = set(args.only or ("shards", "dicom", "cache", "prepare"))
    parts |= {"shards"} if "cache" in parts else set()
    rows = args.rows or (50_000 if args.quick else MIMIC_ROWS)
    print(machine_line(), flush=True)
    with tempfile.TemporaryDirectory() as scratch:  # results print as they come (deleting 600k files is slow)
        tmp = Path(args.keep or scratch)
        tmp.mkdir(parents=True, exist_ok=True)
        for part in ("shards", "dicom", "cache", "prepare"):
            if part in parts:
                print(_run_part(part, tmp, args.quick, rows), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
