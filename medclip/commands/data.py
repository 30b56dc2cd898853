"""``medclip data check|split``: validate a manifest (quarantine list, PHI tag counts) or split it leak-free."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    check = sub.add_parser("check", help="validate every row; write quarantine.csv; print a summary table")
    check.add_argument("manifest", help="manifest CSV")
    check.add_argument("--output", help="folder for quarantine.csv (default: the manifest's folder)")
    check.add_argument("--no-decode", action="store_true", help="only check that images exist (faster)")
    split = sub.add_parser("split", help="write a copy of the manifest with a leak-free split column")
    split.add_argument("manifest", help="manifest CSV")
    split.add_argument("--val", type=float, default=0.1, help="fraction of rows for validation (default 0.1)")
    split.add_argument("--test", type=float, default=0.1, help="fraction of rows for test (default 0.1)")
    split.add_argument("--seed", type=int, default=0, help="shuffling seed (default 0)")
    split.add_argument("--output", help="output CSV (default: <manifest>_split.csv next to the manifest)")
    for p in (check, split):
        p.add_argument("--column", action="append", default=[], metavar="KEY=NAME",
                       help="column name mapping, e.g. --column image=path --column labels=a,b (repeatable)")
        p.add_argument("--sections", default="findings,impression",
                       help="report sections used as text, comma-separated; 'all' = whole report")
    check.add_argument("--sections-missing", choices=("whole", "quarantine"), default="whole",
                       help="a report with headings but none of --sections: use it whole (default, counted in "
                            "the summary) or quarantine the row")
    from .data_scale import add_parsers

    add_parsers(sub)  # import (public corpora)


def run(args: argparse.Namespace) -> int:
    from . import data_scale

    if args.action in data_scale.ACTIONS:
        return data_scale.run(args)
    return _check(args) if args.action == "check" else _split(args)


def _columns(items: list[str]) -> dict:
    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not value:
            raise ConfigError(f"--column '{item}' must look like KEY=NAME (e.g. image=path)")
        out[key.strip()] = [v.strip() for v in value.split(",") if v.strip()] if key.strip() == "labels" else value
    return out


def _sections(text: str) -> list[str] | None:
    return None if text.strip().lower() in ("all", "none", "") else [s.strip() for s in text.split(",") if s.strip()]


def _check(args) -> int:
    from ..data.guard import resolve_limits
    from ..data.manifest import check_manifest, load_manifest, phi_tag_counts, summarize, write_quarantine
    from ..data.splits import check_splits
    from .checks import output_folder

    resolve_limits()  # a bad MEDCLIP_MAX_PIXELS / MEDCLIP_MIN_IMAGE_SIZE is one error, not one per image
    df = load_manifest(args.manifest, _columns(args.column))
    out_dir = Path(args.output) if args.output else Path(args.manifest).resolve().parent
    output_folder("--output" if args.output else "--output (default: the manifest's folder)", str(out_dir))
    good, quarantine = check_manifest(df, _sections(args.sections), verify_images=not args.no_decode, progress=True,
                                      sections_missing=args.sections_missing)
    path = write_quarantine(quarantine, out_dir)
    print(f"{args.manifest}: {len(df)} rows, {len(good)} ok, {len(quarantine)} quarantined")
    print(summarize(good, quarantine).to_string(index=False))
    print(f"quarantine list: {path}")
    phi = phi_tag_counts(df["image"].drop_duplicates())
    if phi:
        print("PHI tags present in DICOM headers (files per tag; values are never shown):")
        print("\n".join(f"  {tag}: {count}" for tag, count in phi.items()))
    else:
        print("PHI tags present in DICOM headers: none")
    if (good["split"] != "").any():
        check_splits(good)
        print("given splits: leak-free (no patient or image in two splits)")
    return 0


def _split(args) -> int:

    from ..data.csvsafe import write_csv
    from ..data.manifest import load_manifest, read_manifest_csv
    from ..data.splits import split_leak_free
    from .checks import in_range, output_file

    in_range("--val", args.val, 0, 1, high_open=True)
    in_range("--test", args.test, 0, 1, high_open=True)
    in_range("--val + --test", args.val + args.test, 0, 1, high_open=True)
    src = Path(args.manifest)
    out = Path(args.output) if args.output else src.with_name(f"{src.stem}_split.csv")
    output_file("--output", str(out))
    columns = _columns(args.column)
    df = split_leak_free(load_manifest(args.manifest, columns), args.val, args.test, args.seed)
    raw = read_manifest_csv(args.manifest)
    raw[columns.get("split", "split")] = df["split"].to_numpy()
    if out.parent.resolve() != src.resolve().parent:  # keep relative paths pointing at the same files
        for key in ("image", "report_path"):
            name = columns.get(key, key)
            if name in raw.columns:
                raw[name] = [_relocate(v, src.resolve().parent, out.parent.resolve()) for v in raw[name]]
    write_csv(raw, out, keep=columns.get("labels", []))
    table = df.groupby("split").agg(rows=("image", "size"), images=("image", "nunique"),
                                    patients=("patient_id", lambda s: s[s != ""].nunique()))
    print(table.reindex(["train", "val", "test"]).fillna(0).astype(int).to_string())
    print(f"leak-free split (seed {args.seed}) written to {out}")
    return 0


def _relocate(value: str, old_root: Path, new_root: Path) -> str:
    """A path written relative to ``old_root``, rewritten relative to ``new_root`` (absolute paths unchanged)."""
    import os

    if not value or os.path.isabs(value):
        return value
    return os.path.relpath(old_root / value, new_root)
