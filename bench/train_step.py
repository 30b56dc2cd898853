"""Training-step throughput: medclip vs open_clip, same architecture, batch, precision and report text.

One step = forward of both towers, symmetric InfoNCE (the same :func:`medclip.clip_loss` for both
libraries, so only the models differ), backward and AdamW. Random weights; random images; the text is
real IU X-ray report text (FINDINGS+IMPRESSION, then IMPRESSION only), a different random batch every
round, the same batches for both libraries. Ours runs with its default length handling (the batch is
cut into length buckets, see ``medclip.text``) and, as an extra row, trimmed to the batch maximum only
(``max_buckets=1``). Repetitions are interleaved (ours, open_clip, ours, ...) and each row reports the
median, so machine noise cancels in the ratio.

The "% of peak" column counts useful matmul FLOPs only — the image tower (counted by
``torch.utils.flop_counter``) and the text tower at each report's *real* length, times 3 for forward +
backward — against a large fp32 ``torch.mm`` measured in this script.

Usage::

    python bench/train_step.py [--quick] [--archs ViT-B-32 RN50] [--batch 32]
    python bench/train_step.py --device cuda --precision bf16     # GPU users

Last line: the key ratios (ours / open_clip pairs/s).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import medclip  # noqa: E402
from medclip.loss import clip_loss  # noqa: E402

TEXT_SETS = ("findings+impression", "impression")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer repetitions (never smaller models)")
    p.add_argument("--archs", nargs="+", default=["ViT-B-32", "RN50"])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--reps", type=int, default=None, help="timed rounds per row (default 5, --quick 3)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"],
                   help="autocast dtype for both libraries (fp16/bf16 on GPU)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    return p.parse_args(argv)


def autocast(device: str, precision: str):
    """Autocast context for ``precision`` (fp32: none)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device, dtype={"fp16": torch.float16, "bf16": torch.bfloat16}[precision])


def make_step(model, optimizer, batches, images, device, precision, max_buckets=None):
    """A zero-argument training step that walks through ``batches`` (token ids) in order.

    ``max_buckets`` (ours only) is set on the text tower before each step, so one model (and one
    optimizer state) serves both of our rows.
    """
    state = {"i": 0}

    def step():
        if max_buckets is not None:
            model.text.max_buckets = max_buckets
        text = batches[state["i"] % len(batches)]
        state["i"] += 1
        with autocast(device, precision):
            out = model(images, text)
            loss = clip_loss(out["image_features"].float(), out["text_features"].float(), out["logit_scale"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()

    return step


def adamw(model):
    """The same optimizer for both libraries (torch defaults, CLIP-like weight decay)."""
    return torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.1)


def step_flops(model, arch_batches, batch) -> float:
    """Mean useful FLOPs of one training step over the benchmark batches (3x forward)."""
    cfg = model.config
    image = common.vision_forward_flops(model.visual, cfg.vision.image_size, cfg.vision.in_chans) * batch
    texts = [common.text_forward_flops((ids.argmax(-1) + 1).tolist(), cfg.text.width, cfg.text.layers,
                                       cfg.text.mlp_ratio, cfg.embed_dim) for ids in arch_batches]
    return 3 * (image + sum(texts) / len(texts))


def bench_arch(arch, args, text_sets, peak) -> list[dict]:
    """All rows for one architecture: per text set, open_clip vs ours (bucketed and trim-only)."""
    import open_clip

    torch.manual_seed(0)
    ours = medclip.create_model(arch).to(args.device).train()
    theirs = open_clip.create_model(arch, output_dict=True).to(args.device).train()
    tokenizer = medclip.get_tokenizer(arch)
    size = ours.config.vision.image_size
    images = torch.randn(args.batch, 3, size, size, device=args.device)
    default_buckets = ours.text.max_buckets
    opt_ours, opt_theirs = adamw(ours), adamw(theirs)
    rows = []
    reps = args.reps or (3 if args.quick else 5)
    for name, texts in text_sets.items():
        batches = [tokenizer(common.sample_batch(texts, args.batch, seed)).to(args.device)
                   for seed in range(reps + 1)]
        fns = {
            "open_clip": make_step(theirs, opt_theirs, batches, images, args.device, args.precision),
            "medclip": make_step(ours, opt_ours, batches, images, args.device, args.precision, default_buckets),
        }
        if default_buckets > 1:
            fns["medclip (trim only)"] = make_step(ours, opt_ours, batches, images, args.device, args.precision, 1)
        times = common.interleaved(fns, reps=reps, warmup=1)
        flops = step_flops(ours, batches, args.batch)
        lengths = torch.cat([(b.argmax(-1) + 1).float() for b in batches])
        for lib, seconds in times.items():
            rows.append({"arch": arch, "text": name, "lib": lib, "seconds": seconds,
                         "pairs_s": args.batch / seconds, "ratio": times["open_clip"] / seconds,
                         "peak": flops / seconds / peak if peak else float("nan"),
                         "mean_len": float(lengths.mean())})
        ours.text.max_buckets = default_buckets
    return rows


def bf16_note(device: str) -> str | None:
    """Why the bf16 row is skipped on this CPU (or None when bf16 is fast here)."""
    if device != "cpu":
        return None
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return ("bf16 row skipped: this CPU has no native bf16 (oneDNN reports no AVX512-BF16/AMX); "
                "emulated bf16 is far slower than fp32 here")
    return None


def bench_bf16(arch, args, texts, peak) -> dict:
    """Our bf16-autocast step (CPU with native bf16 only)."""
    bf16_args = argparse.Namespace(**{**vars(args), "precision": "bf16"})
    torch.manual_seed(0)
    model = medclip.create_model(arch).train()
    tokenizer = medclip.get_tokenizer(arch)
    size = model.config.vision.image_size
    images = torch.randn(args.batch, 3, size, size)
    reps = args.reps or (3 if args.quick else 5)
    batches = [tokenizer(common.sample_batch(texts, args.batch, seed)) for seed in range(reps + 1)]
    fn = make_step(model, adamw(model), batches, images, "cpu", bf16_args.precision)
    seconds = common.interleaved({"bf16": fn}, reps=reps)["bf16"]
    return {"arch": arch, "text": "findings+impression", "lib": "medclip bf16 autocast", "seconds": seconds,
            "pairs_s": args.batch / seconds, "ratio": float("nan"), "peak": float("nan"), "mean_len": float("nan")}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# training step, batch {args.batch}, {args.precision}, {args.device}: {common.machine_line()}")
    text_sets = {name: common.iu_xray_texts(name) for name in TEXT_SETS}
    peak = common.matmul_peak_flops() if args.device == "cpu" else 0.0
    if peak:
        print(f"fp32 matmul peak (2048^3 torch.mm): {peak / 1e9:.1f} GFLOP/s")
    rows = []
    for arch in args.archs:
        rows += bench_arch(arch, args, text_sets, peak)
    note = bf16_note(args.device)
    if args.device == "cpu" and args.precision == "fp32":
        if note:
            print(note)
        else:
            rows.append(bench_bf16(args.archs[0], args, text_sets["findings+impression"], peak))
    print(common.markdown_table(
        ["arch", "text", "library", "s/step", "pairs/s", "vs open_clip", "% of fp32 peak", "mean tokens"],
        [[r["arch"], r["text"], r["lib"], f"{r['seconds']:.2f}", f"{r['pairs_s']:.1f}", f"{r['ratio']:.2f}x",
          f"{100 * r['peak']:.0f}%", f"{r['mean_len']:.1f}"] for r in rows]))
    key = [f"{r['arch']}/{r['text']} {r['ratio']:.2f}x" for r in rows if r["lib"] == "medclip"]
    print("KEY train_step ours/open_clip pairs/s: " + ", ".join(key))
    return 0


if __name__ == "__main__":
    sys.exit(main())
