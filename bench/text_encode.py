"""Text encoding throughput (inference): medclip vs open_clip with the SAME weights, embeddings compared.

open_clip's ViT-B-32 text tower is built with random weights and copied into ours (its fused
``in_proj`` split into our q/k/v projections), so both compute the same function; the script asserts
that the normalised embeddings agree (max abs difference printed). Two workloads:

* zero-shot prompts: 16 chest findings x 8 templates (5-15 tokens), encoded as one batch, as a
  zero-shot classifier builds its class embeddings;
* reports: IU X-ray FINDINGS+IMPRESSION text in batches of 64 (a different batch each round).

Repetitions are interleaved (ours, open_clip, ours, ...) and medians reported.

Usage::

    python bench/text_encode.py [--quick] [--device cuda --precision fp16]

Last line: the key ratios (ours / open_clip texts/s).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import medclip  # noqa: E402

ARCH = "ViT-B-32"
TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2, "bf16": 5e-2}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer repetitions")
    p.add_argument("--reps", type=int, default=None, help="timed rounds (default 10, --quick 3)")
    p.add_argument("--report-batch", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    return p.parse_args(argv)


def build_pair(device: str, precision: str):
    """open_clip's model and ours holding the same weights, both in eval mode."""
    ours, theirs = common.same_weight_pair(ARCH)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    return ours.eval().to(device, dtype), theirs.eval().to(device, dtype)


def compare(ours, theirs, batches) -> float:
    """Max abs difference of the normalised embeddings over ``batches``."""
    with torch.inference_mode():
        return max(float((ours.encode_text(ids).float() - theirs.encode_text(ids, normalize=True).float())
                         .abs().max()) for ids in batches)


def throughput(ours, theirs, batches, reps) -> dict[str, float]:
    """Texts per second of each library (interleaved medians)."""
    def runner(encode):
        state = {"i": 0}

        def run():
            ids = batches[state["i"] % len(batches)]
            state["i"] += 1
            with torch.inference_mode():
                out = encode(ids)
            if out.is_cuda:
                torch.cuda.synchronize()

        return run

    times = common.interleaved({"medclip": runner(lambda ids: ours.encode_text(ids)),
                                "open_clip": runner(lambda ids: theirs.encode_text(ids, normalize=True))},
                               reps=reps, warmup=1 if reps < 5 else 2)
    return {lib: batches[0].shape[0] / seconds for lib, seconds in times.items()}


def main(argv=None) -> int:
    args = parse_args(argv)
    reps = args.reps or (3 if args.quick else 10)
    print(f"# text encoding, {ARCH} text tower, {args.precision}, {args.device}: {common.machine_line()}")
    ours, theirs = build_pair(args.device, args.precision)
    tokenizer = medclip.get_tokenizer(ARCH)
    reports = common.iu_xray_texts("findings+impression")
    workloads = {
        "zero-shot prompts": [tokenizer(common.zero_shot_prompts()).to(args.device)],
        "reports (F+I)": [tokenizer(common.sample_batch(reports, args.report_batch, s)).to(args.device)
                          for s in range(reps + 2)],
    }
    rows, key = [], []
    for name, batches in workloads.items():
        diff = compare(ours, theirs, batches)
        if diff > TOLERANCE[args.precision]:
            sys.exit(f"embeddings differ: max abs diff {diff:.2e} on {name} (tolerance {TOLERANCE[args.precision]})")
        rate = throughput(ours, theirs, batches, reps)
        lengths = torch.cat([b.argmax(-1) + 1 for b in batches]).float()
        ratio = rate["medclip"] / rate["open_clip"]
        rows.append([name, batches[0].shape[0], f"{lengths.mean():.1f}", f"{rate['open_clip']:.0f}",
                     f"{rate['medclip']:.0f}", f"{ratio:.2f}x", f"{diff:.1e}"])
        key.append(f"{name} {ratio:.2f}x")
    print(common.markdown_table(["texts", "batch", "mean tokens", "open_clip texts/s", "medclip texts/s",
                                 "ratio", "max abs diff"], rows))
    print("KEY text_encode ours/open_clip texts/s: " + ", ".join(key))
    return 0


if __name__ == "__main__":
    sys.exit(main())
