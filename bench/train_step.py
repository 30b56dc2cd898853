"""Training-step throughput: medclip vs open_clip, same architecture, weights, batch, precision and report text.

One step = forward of both towers, symmetric InfoNCE (the same :func:`medclip.clip_loss` for both
libraries, so only the models differ), backward and AdamW. open_clip's model is built with random weights
and copied into ours (:func:`medclip.interop.open_clip.convert_open_clip_state`), so both libraries start
from the SAME weights, see the same random images and the same real IU X-ray report batches
(FINDINGS+IMPRESSION, then IMPRESSION only; a different batch every round) in the same order. Each row
owns its model and optimizer, so the losses of every step must agree between the libraries: the script
prints the largest difference (a check that both compute the same thing, nothing skipped).

Ours runs its text path (the batch's real tokens packed into one matrix, see ``medclip.text``).
Repetitions are interleaved (ours, open_clip, ours, ...) and each row reports the median, so machine
noise cancels in the ratio.

The "% of peak" column counts useful matmul FLOPs only — the image tower (counted by
``torch.utils.flop_counter``) and the text tower at each report's *real* token length, times 3 for
forward + backward; the same count for both libraries — against a large fp32 ``torch.mm`` measured in
this script. A bf16-autocast row is added only where the CPU has native bf16
(``torch.ops.mkldnn._is_mkldnn_bf16_supported()``); otherwise the table says why it is missing.

Usage::

    python bench/train_step.py [--quick] [--archs ViT-B-32 RN50] [--batch 32]
    python bench/train_step.py --device cuda --precision bf16     # GPU users
    python bench/train_step.py --profile --archs ViT-B-32         # where the time goes (torch.profiler)

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
    p.add_argument("--reps", type=int, default=None, help="timed rounds per row (default 5, --quick 2)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"],
                   help="autocast dtype for both libraries (fp16/bf16 on GPU)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--profile", action="store_true",
                   help="instead of timing: torch.profiler table of one F+I step per library (first arch)")
    return p.parse_args(argv)


def autocast(device: str, precision: str):
    """Autocast context for ``precision`` (fp32: none)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device, dtype={"fp16": torch.float16, "bf16": torch.bfloat16}[precision])


def make_step(model, batches, images, device, precision):
    """A zero-argument training step (own AdamW) that walks through ``batches`` (token ids) in order.

    The step's losses are kept in ``step.losses``.
    """
    optimizer = adamw(model)

    def step():
        text = batches[len(step.losses) % len(batches)]
        with autocast(device, precision):
            out = model(images, text)
            loss = clip_loss(out["image_features"].float(), out["text_features"].float(), out["logit_scale"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()
        step.losses.append(loss.item())

    step.losses = []
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


def step_inputs(ours, args, texts: list[str], n_batches: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The fixed random image batch (seed 1) and ``n_batches`` token batches of real report text (seeds 0..)."""
    size = ours.config.vision.image_size
    images = torch.randn(args.batch, 3, size, size, generator=torch.Generator().manual_seed(1)).to(args.device)
    tokenizer = medclip.get_tokenizer(ours.config)
    return images, [tokenizer(common.sample_batch(texts, args.batch, seed)).to(args.device)
                    for seed in range(n_batches)]


def timed_reps(args) -> int:
    """Timed rounds per row: --reps, else 5 (2 with --quick)."""
    return args.reps or (2 if args.quick else 5)


def token_lengths(batches: list[torch.Tensor]) -> torch.Tensor:
    """Real token count (up to and including EOS, the highest id) of every text in ``batches``."""
    return torch.cat([(b.argmax(-1) + 1).float() for b in batches])


def bench_arch(arch, args, text_sets, peak) -> list[dict]:
    """All rows for one architecture: per text set, open_clip vs ours."""
    ours, theirs = (m.to(args.device).train() for m in common.same_weight_pair(arch))
    reps = timed_reps(args)
    rows = []
    for set_index, (name, texts) in enumerate(text_sets.items()):
        images, set_batches = step_inputs(ours, args, texts, reps + 1)
        fns = {"open_clip": make_step(theirs, set_batches, images, args.device, args.precision),
               "medclip": make_step(ours, set_batches, images, args.device, args.precision)}
        # one untimed warm-up round per architecture (allocator, oneDNN kernels); each fn then walks the
        # same batches in the same order, so every library's losses must agree step by step
        times = common.interleaved(fns, reps=reps, warmup=0 if set_index else 1)
        loss_diff = max(abs(a - b) for fn in fns.values() for a, b in zip(fn.losses, fns["open_clip"].losses))
        flops = step_flops(ours, set_batches, args.batch)
        lengths = token_lengths(set_batches)
        for lib, seconds in times.items():
            rows.append({"arch": arch, "text": name, "lib": lib, "seconds": seconds,
                         "pairs_s": args.batch / seconds, "ratio": times["open_clip"] / seconds,
                         "peak": flops / seconds / peak if peak else float("nan"),
                         "mean_len": float(lengths.mean()), "max_len": float(lengths.max()),
                         "loss_diff": loss_diff})
    return rows


def bf16_note(device: str) -> str | None:
    """Why there is no bf16 row on this CPU (or None when bf16 is native here)."""
    if device != "cpu":
        return None
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return ("skipped: no native bf16 on this CPU (torch.ops.mkldnn._is_mkldnn_bf16_supported() is False: "
                "no AVX512-BF16/AMX); emulated bf16 is far slower than fp32")
    return None


def bench_bf16(arch, args, texts) -> dict:
    """Our bf16-autocast step (CPU with native bf16 only), F+I text."""
    ours = common.same_weight_pair(arch)[0].train()
    reps = timed_reps(args)
    images, batches = step_inputs(ours, args, texts, reps + 1)
    seconds = common.interleaved({"bf16": make_step(ours, batches, images, "cpu", "bf16")}, reps=reps)["bf16"]
    return {"arch": arch, "text": "findings+impression", "lib": "medclip bf16 autocast", "seconds": seconds,
            "pairs_s": args.batch / seconds}


def format_rows(rows: list[dict]) -> list[list[str]]:
    """Table cells; rows without a measurement (the bf16 note) show their note."""
    out = []
    for r in rows:
        if "note" in r:
            out.append([r["arch"], r["text"], r["lib"], r["note"], "", "", "", "", ""])
            continue
        cells = [r["arch"], r["text"], r["lib"], f"{r['seconds']:.2f}", f"{r['pairs_s']:.2f}"]
        if "ratio" in r:
            cells += [f"{r['ratio']:.2f}x", f"{100 * r['peak']:.0f}%", f"{r['mean_len']:.1f} / {r['max_len']:.0f}",
                      f"{r['loss_diff']:.1e}"]
        else:
            cells += ["-", "-", "-", "-"]
        out.append(cells)
    return out


def profile_step(arch: str, args, texts, row_limit: int = 12) -> None:
    """Print torch.profiler's top operators (self CPU time) of one training step per library, same batch."""
    from torch.profiler import ProfilerActivity, profile

    ours, theirs = (m.to(args.device).train() for m in common.same_weight_pair(arch))
    images, batches = step_inputs(ours, args, texts, 1)
    for lib, model in (("open_clip", theirs), ("medclip", ours)):
        step = make_step(model, batches, images, args.device, args.precision)
        step()  # warm-up (allocator, oneDNN kernels)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        print(f"## {lib} {arch}, one step, F+I text (mean {float(token_lengths(batches).mean()):.1f} "
              f"tokens)\n" + prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=row_limit))


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# training step, batch {args.batch}, {args.precision}, {args.device}: {common.machine_line()}")
    text_sets = {name: common.iu_xray_texts(name) for name in TEXT_SETS}
    if args.profile:
        profile_step(args.archs[0], args, text_sets["findings+impression"])
        return 0
    peak = common.matmul_peak_flops() if args.device == "cpu" else 0.0
    if peak:
        print(f"fp32 matmul peak (2048^3 torch.mm, best of 5): {peak / 1e9:.1f} GFLOP/s")
    rows = []
    for arch in args.archs:
        rows += bench_arch(arch, args, text_sets, peak)
    if args.device == "cpu" and args.precision == "fp32":
        note = bf16_note(args.device)
        if note:
            rows.append({"arch": args.archs[0], "text": "findings+impression", "lib": "medclip bf16 autocast",
                         "note": note})
        else:
            rows.append(bench_bf16(args.archs[0], args, text_sets["findings+impression"]))
    print(common.markdown_table(
        ["arch", "text", "library", "s/step", "pairs/s", "vs open_clip", "% of fp32 peak (useful FLOPs)",
         "tokens mean / max", "max loss diff vs open_clip"], format_rows(rows)))
    key = [f"{r['arch']}/{r['text']} {r['ratio']:.2f}x" for r in rows if r["lib"] == "medclip"]
    print("KEY train_step ours/open_clip pairs/s: " + ", ".join(key))
    return 0


if __name__ == "__main__":
    sys.exit(main())
