"""``medclip demo-data OUT_DIR``: write the synthetic demo corpus (DICOM/PNG chest phantoms + templated reports)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out_dir", help="output folder (images/ and manifest.csv are written there)")
    parser.add_argument("--patients", type=int, default=300, help="number of synthetic patients (default 300)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0); same seed, same files")
    parser.add_argument("--image-size", type=int, default=128, help="nominal image side in pixels (default 128)")


def run(args: argparse.Namespace) -> int:
    import pandas as pd

    from ..data.demo import make_demo_corpus
    from .checks import in_range, output_folder

    in_range("--patients", args.patients, 1)
    in_range("--image-size", args.image_size, 16)
    output_folder("OUT_DIR", args.out_dir)
    path = make_demo_corpus(args.out_dir, n_patients=args.patients, seed=args.seed, image_size=args.image_size)
    df = pd.read_csv(path)
    counts = df.groupby("split").agg(images=("image", "size"), patients=("patient_id", "nunique"),
                                     heldout=("heldout", "sum"))
    print(counts.reindex(["train", "val", "test"]).to_string())
    print(f"demo corpus written: {path} ({len(df)} images; held out of training, only in val/test: an enlarged "
          "heart with a left effusion, an opacity in the left upper zone)")
    return 0
