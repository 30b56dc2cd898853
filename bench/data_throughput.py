"""DICOM throughput: raw pydicom decode vs medclip's first (uncached) pass vs a cached pass.

    python bench/data_throughput.py [--quick] [--image-size 224] [--in-chans 1]

Files: the real DICOMs in ``../shared/data/dicom`` (chest/extremity CR up to 1955x1841, MR, RGB,
palette, JPEG 2000, JPEG Lossless) plus the demo corpus's small DICOMs, each pass over the same list.

* raw: ``pydicom.dcmread(path).pixel_array`` (decode only: no LUTs, no resize; a floor, not a pipeline);
* first pass: ``ImageTransform(path)`` with an empty cache (decode, Modality/VOI LUT, MONOCHROME1,
  resize + pad, normalise; writes the cache);
* cached: the same again (reads the ``.npy`` cache, normalises).

Raw and first pass alternate file by file. The last lines are the first-pass/raw ratio (target >= 0.8x)
and the cached/first-pass speed ratio (target >= 10x).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import SHARED_DATA, machine_line  # noqa: E402


def _files(tmp: Path, quick: bool) -> list[str]:
    from medclip.data.demo import make_demo_corpus

    real = sorted(str(p) for p in (SHARED_DATA / "dicom").glob("*.dcm"))
    if not real:
        sys.exit(f"benchmark data not found: {SHARED_DATA / 'dicom'} (set MEDCLIP_SHARED_DATA)")
    manifest = make_demo_corpus(tmp / "demo", n_patients=10 if quick else 60, seed=0)
    demo = sorted(str(p) for p in manifest.parent.glob("images/*.dcm"))
    return real + demo


def _rate(fn, files: list[str]) -> tuple[float, float]:
    start = time.perf_counter()
    for path in files:
        fn(path)
    seconds = time.perf_counter() - start
    return len(files) / seconds, seconds


def _interleaved(raw, first, files: list[str]) -> tuple[float, float]:
    """Total seconds of ``raw`` and ``first`` over ``files``, alternating them file by file (a shared machine's
    load then hits both alike)."""
    totals = [0.0, 0.0]
    for path in files:
        for k, fn in enumerate((raw, first)):
            start = time.perf_counter()
            fn(path)
            totals[k] += time.perf_counter() - start
    return totals[0], totals[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer demo files (a few seconds)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--in-chans", type=int, default=1, choices=(1, 3))
    args = parser.parse_args(argv)

    import pydicom

    from medclip.config import VisionConfig
    from medclip.data.transforms import build_image_transform

    with tempfile.TemporaryDirectory() as tmp:
        files = _files(Path(tmp), args.quick)
        vision = VisionConfig(image_size=args.image_size, in_chans=args.in_chans)
        transform = build_image_transform(vision, cache_dir=str(Path(tmp) / "cache"))
        _ = pydicom.dcmread(files[0]).pixel_array  # import/plugin warm-up outside the timings
        raw_s, first_s = _interleaved(lambda p: pydicom.dcmread(p).pixel_array, transform, files)
        cached, cached_s = _rate(transform, files)
    raw, first = len(files) / raw_s, len(files) / first_s
    print(machine_line())
    print(f"{len(files)} DICOM files ({len(files) - 7} demo + 7 real), output {args.in_chans}x{args.image_size}^2")
    print(f"raw pydicom decode : {raw:8.1f} images/s ({raw_s:.2f} s)")
    print(f"medclip first pass : {first:8.1f} images/s ({first_s:.2f} s)  (interleaved with raw, file by file)")
    print(f"medclip cached     : {cached:8.1f} images/s ({cached_s:.2f} s)")
    print(f"first-pass/raw ratio: {first / raw:.2f}x  target >= 0.8x: {'yes' if first / raw >= 0.8 else 'no'}")
    print(f"cached/first-pass ratio: {cached / first:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
