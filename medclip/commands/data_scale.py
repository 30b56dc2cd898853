"""``medclip data import|prepare|shard``: public corpora as manifests; check + split (+ preprocess) once;
WebDataset tar shards for training at scale.

(Registered under ``medclip data`` by :mod:`medclip.commands.data`.)
"""

from __future__ import annotations

import argparse
import contextlib
import os

ACTIONS = ("import", "prepare", "shard")


def add_parsers(sub) -> None:
    """Add the ``import`` action to ``medclip data``'s subparsers."""
    from ..data.corpora import CORPORA
    from ..data.corpora.common import IMPORT_POLICIES

    corpora = "; ".join(f"{name}: {c.help}" for name, c in CORPORA.items())
    imp = sub.add_parser("import", help="write a manifest from a public corpus in its published layout",
                         description=f"Corpora: {corpora}.")
    imp.add_argument("name", choices=list(CORPORA), metavar="NAME", help=", ".join(CORPORA))
    imp.add_argument("root", help="the corpus folder as published (iu-xray: the PNG folder)")
    imp.add_argument("--output", required=True, help="manifest CSV to write (image paths relative to it)")
    imp.add_argument("--frontal-only", action="store_true", help="keep PA/AP images only")
    imp.add_argument("--reports", help="mimic-cxr-jpg: the mimic-cxr-reports folder; mimic-cxr: where files/ "
                                       "with the reports is (default ROOT); iu-xray: the XML report .tgz")
    imp.add_argument("--jpg-meta", help="mimic-cxr: the JPG project's folder (official split, labels, views)")
    imp.add_argument("--uncertain", choices=IMPORT_POLICIES, default="keep",
                     help="CheXpert-style -1 labels: keep -1 (evaluation applies labels.uncertain, default) "
                          "or apply ones/zeros/ignore now")
    _add_prepare(sub)
    _add_shard(sub)


def _add_prepare(sub) -> None:
    prep = sub.add_parser("prepare", help="check, split and optionally preprocess a manifest once, in parallel "
                                          "(also under torchrun: each rank a slice, rank 0 writes)")
    prep.add_argument("manifest", help="manifest CSV")
    prep.add_argument("--output", required=True, help="prepared folder (manifest.csv, quarantine.csv, prepared.json)")
    prep.add_argument("--column", action="append", default=[], metavar="KEY=NAME", help="column name mapping")
    prep.add_argument("--sections", default="findings,impression", help="report sections used as text; 'all'")
    prep.add_argument("--val", type=float, default=0.1, help="validation fraction when the manifest is unsplit")
    prep.add_argument("--test", type=float, default=0.1, help="test fraction when the manifest is unsplit")
    prep.add_argument("--seed", type=int, default=0, help="split seed")
    prep.add_argument("--decode", action="store_true", help="decode every image (default: exists and non-empty)")
    prep.add_argument("--image-size", type=int, help="preprocess once: fill the cache at this size (implies "
                                                      "--decode); train with data.cache_dir = the cache")
    prep.add_argument("--in-chans", type=int, default=1, choices=(1, 3), help="channels of the cached images")
    prep.add_argument("--resize", default="pad", choices=("pad", "crop"))
    prep.add_argument("--cache-dir", help="preprocessing cache (default: OUTPUT/cache)")
    prep.add_argument("--workers", type=int, help="processes per rank (default: all cores)")


def _add_shard(sub) -> None:
    shard = sub.add_parser("shard", help="write WebDataset tar shards (preprocessed uint8/uint16 images, text, "
                                         "labels, ids) of a prepared manifest's split")
    shard.add_argument("manifest", help="prepared folder (medclip data prepare) or a split manifest CSV")
    shard.add_argument("--output", required=True, help="shard folder (000000.tar ... + shards.json)")
    shard.add_argument("--image-size", type=int, required=True, help="the model's image size (e.g. 224)")
    shard.add_argument("--in-chans", type=int, default=1, choices=(1, 3), help="the model's image channels")
    shard.add_argument("--resize", default="pad", choices=("pad", "crop"))
    shard.add_argument("--split", default="train", choices=("train", "val", "test", "all"))
    shard.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default 1000)")
    shard.add_argument("--seed", type=int, default=0, help="order of the samples across shards")
    shard.add_argument("--cache-dir", help="reuse this preprocessing cache (e.g. the prepared folder's cache)")
    shard.add_argument("--workers", type=int, help="processes writing shards (default: all cores)")


def _shard(args) -> int:
    from ..config import VisionConfig
    from ..data.shards import write_shards

    transform = {"vision_config": VisionConfig(image_size=args.image_size, in_chans=args.in_chans),
                 "resize": args.resize, "cache_dir": args.cache_dir,
                 "cache_root": args.manifest if os.path.isdir(args.manifest) else os.path.dirname(args.manifest)}
    index = write_shards(args.manifest, args.output, transform, args.split, args.shard_size, args.seed, args.workers)
    pattern = index["pattern"]
    print(f"{index['samples']} samples in {len(index['shards'])} shards; train with data.shards: \"{pattern}\"")
    return 0


def _prepare(args) -> int:
    from ..config import VisionConfig
    from ..data.prepare import prepare
    from .data import _columns, _sections

    transform = None
    if args.image_size:
        vision = VisionConfig(image_size=args.image_size, in_chans=args.in_chans)
        transform = {"vision_config": vision, "resize": args.resize,
                     "cache_dir": args.cache_dir or os.path.join(args.output, "cache"), "cache_root": args.output}
    with _process_group():
        info = prepare(args.manifest, args.output, _columns(args.column), _sections(args.sections),
                       (args.val, args.test, args.seed), args.decode, transform, args.workers)
    if info is not None:
        splits = ", ".join(f"{k} {v}" for k, v in sorted(info["splits"].items()))
        print(f"{args.manifest}: {info['rows']} rows ok ({splits}), {info['quarantined']} quarantined; "
              f"prepared manifest in {args.output} (train with data.manifest: {args.output})")
    return 0


@contextlib.contextmanager
def _process_group():
    """Under torchrun (WORLD_SIZE > 1): a gloo process group for the ranks' slices, closed afterwards."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        yield
        return
    dist.init_process_group("gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def run(args: argparse.Namespace) -> int:
    if args.action in ("prepare", "shard"):
        return _prepare(args) if args.action == "prepare" else _shard(args)
    from ..data.corpora import import_corpus

    _, line = import_corpus(args.name, args.root, args.output, args.frontal_only, reports=args.reports,
                            jpg_meta=args.jpg_meta, uncertain=args.uncertain)
    print(line)
    return 0
