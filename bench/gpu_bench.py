"""The GPU table of ``bench/gpu.sh``: training step vs open_clip, tiled loss, zero-shot and loader throughput.

Sections, each stopped at its own time cap (``--cap`` seconds of timed work; at least one timed round):

* ``train``: one training step (forward, :func:`medclip.clip_loss`, backward, AdamW) of ViT-B/16 and RN50
  at batch 256 under bf16 autocast, ours vs open_clip from the SAME weights (open_clip's random init
  copied into ours), same images and report batches, interleaved rounds, medians. Model FLOPs
  utilisation = useful FLOPs (3x forward: image tower by ``torch.utils.flop_counter``, text at each
  report's real length) / step time / the card's bf16 dense peak (:data:`BF16_PEAK_TFLOPS`).
* ``loss``: dense (open_clip's ``ClipLoss``) vs tiled (:func:`medclip.loss.tiled_clip_loss`) forward +
  backward at N = 32768 (d = 512, fp32 features), tiled alone at N = 65536: time and peak extra memory.
* ``zeroshot``: images/s of ViT-B/16 image encoding + the demo class file's zero-shot logits.
* ``loader``: images/s of the training data loader (augmentation on, one worker per core, pinned memory)
  over a synthetic demo corpus written to ``--work`` (the shared data folder is not needed).

``--device cpu --tiny`` runs every section with tiny models and sizes (the CPU test of this script).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import common  # noqa: E402
import train_step  # noqa: E402

import medclip  # noqa: E402

# bf16 dense tensor-core peak (TFLOP/s, no sparsity) from the vendors' data sheets; first match wins.
BF16_PEAK_TFLOPS = (("GH200", 989.4), ("H200", 989.4), ("H100 PCIe", 756.0), ("H100 NVL", 835.0),
                    ("H100", 989.4), ("H800", 989.4), ("B200", 2250.0), ("A100", 312.0), ("A800", 312.0),
                    ("L40S", 362.1), ("L40", 181.0), ("L4", 121.0), ("A40", 149.7), ("A6000", 154.8),
                    ("A10", 125.0))
FULL = {"archs": ("ViT-B-16", "RN50"), "batch": 256, "loss_n": (32768, 65536), "patients": 100, "image": 256,
        "zs_arch": "ViT-B-16"}
TINY = {"archs": ("tiny-vit", "tiny-rn"), "batch": 24, "loss_n": (512, 1024), "patients": 8, "image": 64,
        "zs_arch": "tiny-vit"}
# open_clip-side configs of the tiny architectures (a ModifiedResNet needs RN50's depths to map onto timm)
TINY_OPEN_CLIP = {
    "tiny-vit": {"embed_dim": 32, "vision_cfg": {"layers": 1, "width": 64, "patch_size": 16, "image_size": 32}},
    "tiny-rn": {"embed_dim": 32, "vision_cfg": {"layers": [3, 4, 6, 3], "width": 8, "head_width": 64,
                                                "image_size": 64}},
}
TINY_TEXT = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny models and sizes (CPU test of this script)")
    p.add_argument("--cap", type=float, default=25.0, help="seconds of timed work per section")
    p.add_argument("--sections", nargs="+", default=["train", "loss", "zeroshot", "loader"])
    p.add_argument("--work", default="gpu_bench_work", help="folder for the synthetic demo corpus")
    return p.parse_args(argv)


def card_peak(device: torch.device) -> tuple[float, str]:
    """The bf16 dense peak FLOP/s of this device and its name (0 when unknown; CPU: measured fp32 mm)."""
    if device.type != "cuda":
        return common.matmul_peak_flops(n=512, reps=3), f"{common.cpu_name()} (measured fp32 mm peak)"
    name = torch.cuda.get_device_name(device)
    peak = next((tflops for key, tflops in BF16_PEAK_TFLOPS if key in name), 0.0)
    return peak * 1e12, name


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def capped(fns: dict, cap: float, device: torch.device) -> dict[str, float]:
    """Median seconds of each function: one warm-up round, then interleaved rounds until ``cap`` seconds."""
    for fn in fns.values():  # warm-up (allocator, kernels, autotuning)
        fn()
    synchronize(device)
    start = time.perf_counter()
    first = common.interleaved(fns, reps=1, warmup=0)
    reps = max(0, min(9, int(cap / max(time.perf_counter() - start, 1e-6)) - 1))
    if not reps:
        return first
    return common.interleaved(fns, reps=reps, warmup=0)


def model_pair(arch: str, tiny: bool):
    """``(ours, theirs)`` holding the same weights (open_clip's random init copied into ours)."""
    if not tiny:
        return common.same_weight_pair(arch)
    import open_clip

    from medclip.interop.clip_common import build_and_load
    from medclip.interop.open_clip import config_from_open_clip, convert_open_clip_state

    torch.manual_seed(0)
    theirs = open_clip.CLIP(**TINY_OPEN_CLIP[arch], text_cfg=TINY_TEXT, output_dict=True)
    state = theirs.state_dict()
    ours = build_and_load(config_from_open_clip(state, arch), convert_open_clip_state(state), arch)
    return ours, theirs


def demo_reports(manifest: Path, batch: int) -> list[str]:
    """The demo corpus's reports, repeated until one batch can be drawn without replacement."""
    import pandas as pd

    texts = pd.read_csv(manifest)["report"].dropna().astype(str).tolist()
    return texts * -(-batch // len(texts))


def section_train(args, sizes, device, manifest) -> list[list[str]]:
    """Training step rows: per architecture, open_clip and ours (pairs/s, ratio, MFU)."""
    precision = "bf16" if device.type == "cuda" else "fp32"
    peak, _ = card_peak(device)
    texts, rows = demo_reports(manifest, sizes["batch"]), []
    for arch in sizes["archs"]:
        ours, theirs = (m.to(device).train() for m in model_pair(arch, args.tiny))
        size = ours.config.vision.image_size
        images = torch.randn(sizes["batch"], 3, size, size, generator=torch.Generator().manual_seed(1)).to(device)
        tokenizer = medclip.get_tokenizer(ours.config)
        batches = [tokenizer(common.sample_batch(texts, sizes["batch"], s)).to(device) for s in range(4)]
        fns = {lib: train_step.make_step(m, batches, images, device.type, precision)
               for lib, m in (("open_clip", theirs), ("medclip", ours))}
        times = capped(fns, args.cap / len(sizes["archs"]), device)
        flops = train_step.step_flops(ours, batches, sizes["batch"])
        for lib, seconds in times.items():
            mfu = f"{100 * flops / seconds / peak:.0f}%" if peak else "- (card not in BF16_PEAK_TFLOPS)"
            rows.append([f"train {arch} b{sizes['batch']} {precision}", lib,
                         f"{sizes['batch'] / seconds:.1f} pairs/s", f"{times['open_clip'] / seconds:.2f}x",
                         f"MFU {mfu}"])
        del ours, theirs, fns
    return rows


def loss_run(method: str, n: int, device: torch.device, cap: float) -> tuple[float, float]:
    """Median seconds and peak extra memory (MiB, CUDA only) of one loss forward + backward."""
    from open_clip.loss import ClipLoss

    from medclip.loss import tiled_clip_loss

    fn = ClipLoss() if method == "dense" else tiled_clip_loss
    gen = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(n, 512, generator=gen), dim=1).to(device).requires_grad_()
    txt = torch.nn.functional.normalize(torch.randn(n, 512, generator=gen), dim=1).to(device).requires_grad_()
    scale = torch.tensor(14.3, device=device, requires_grad=True)

    def step():
        fn(img, txt, scale).backward()
        synchronize(device)

    base = 0
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    seconds = capped({method: step}, cap, device)[method]
    extra = (torch.cuda.max_memory_allocated(device) - base) / 2**20 if device.type == "cuda" else float("nan")
    return seconds, extra


def section_loss(args, sizes, device, manifest) -> list[list[str]]:
    """Dense vs tiled at the first N, tiled alone at the second."""
    small, large = sizes["loss_n"]
    runs = [("dense", small), ("tiled", small), ("tiled", large)]
    rows, results = [], {}
    for method, n in runs:
        seconds, extra = loss_run(method, n, device, args.cap / len(runs))
        results[(method, n)] = seconds
        memory = f"{extra:.0f} MiB extra" if extra == extra else "memory: CUDA only"
        rows.append([f"loss N={n} d=512", method, f"{seconds * 1000:.1f} ms fwd+bwd", memory, ""])
    rows[1][4] = f"tiled {results[('dense', small)] / results[('tiled', small)]:.2f}x dense speed"
    return rows


def demo_loaders(manifest: Path, model_config, batch: int, workers: int) -> dict:
    from medclip.data.config import DataConfig
    from medclip.data.dataset import build_dataloaders

    data = DataConfig(manifest=str(manifest), sections=None, eval_batch_size=batch, num_workers=workers,
                      cache_dir=str(manifest.parent / "cache"))
    return build_dataloaders(data, model_config, medclip.get_tokenizer(model_config), seed=0, train_batch_size=batch)


def section_zeroshot(args, sizes, device, manifest) -> list[list[str]]:
    """Image encoding + zero-shot logits of the demo class file, images/s."""
    from medclip.eval.zeroshot import ZeroShotClassifier

    model = medclip.create_model(sizes["zs_arch"], vision={"in_chans": 1}).to(device).eval()
    loader = demo_loaders(manifest, model.config, sizes["batch"], 0)["train"]
    images = torch.cat([b["image"] for b in loader])[: sizes["batch"]]
    images = images.repeat(-(-sizes["batch"] // len(images)), 1, 1, 1)[: sizes["batch"]].to(device)
    clf = ZeroShotClassifier(model, str(BENCH.parent / "recipes" / "classes" / "demo-findings.yaml"))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32

    def run():
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
            clf.logits(model.encode_image(images).float().cpu())
        synchronize(device)

    seconds = capped({"zs": run}, args.cap, device)["zs"]
    return [[f"zero-shot {sizes['zs_arch']} b{sizes['batch']}", "medclip", f"{len(images) / seconds:.0f} images/s",
             f"{len(clf.names)} classes", ""]]


def section_loader(args, sizes, device, manifest) -> list[list[str]]:
    """Training loader images/s: augmentation on, one worker per core, pinned memory on CUDA.

    The loader draws from the training split with replacement through persistent workers; one untimed
    pass over the split fills the preprocessing cache first (as every epoch after the first).
    """
    from torch.utils.data import DataLoader, RandomSampler

    workers = 0 if args.tiny else min(os.cpu_count() or 1, 32)
    config = medclip.get_model_config(sizes["zs_arch"], vision={"in_chans": 1})
    train = demo_loaders(manifest, config, sizes["batch"], 0)["train"]
    loader = DataLoader(train.dataset, batch_size=sizes["batch"], num_workers=workers, drop_last=True,
                        sampler=RandomSampler(train.dataset, replacement=True, num_samples=10**8),
                        collate_fn=train.collate_fn, pin_memory=device.type == "cuda",
                        persistent_workers=workers > 0)
    batches = iter(loader)
    for _ in range(-(-len(train.dataset) // sizes["batch"]) + 1):
        next(batches)
    images, start = 0, time.perf_counter()
    while images == 0 or time.perf_counter() - start < args.cap:
        images += next(batches)["image"].to(device, non_blocking=True).shape[0]
    synchronize(device)
    seconds = time.perf_counter() - start
    return [[f"loader {config.vision.image_size}px b{sizes['batch']}", f"{workers} workers",
             f"{images / seconds:.0f} images/s", f"{len(train.dataset)} demo images, augment on", ""]]


SECTIONS = {"train": section_train, "loss": section_loss, "zeroshot": section_zeroshot, "loader": section_loader}


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    sizes = TINY if args.tiny else FULL
    from medclip.data.demo import make_demo_corpus

    manifest = make_demo_corpus(Path(args.work) / "demo", n_patients=sizes["patients"], seed=0,
                                image_size=sizes["image"])
    _, name = card_peak(device)
    print(f"# medclip GPU benchmark: {name}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}, "
          f"cap {args.cap:.0f} s per section")
    # the table is printed row by row, so a run stopped by the caller's time limit still shows what it measured
    print(common.markdown_table(["section", "library / setting", "throughput", "vs / memory", "note"], []),
          flush=True)
    failed = []
    for section in args.sections:
        start = time.perf_counter()
        try:
            rows = SECTIONS[section](args, sizes, device, manifest)
        except Exception as exc:  # one failed section must not hide the others; it is reported and fails the run
            failed.append(section)
            rows = [[section, "FAILED", f"{type(exc).__name__}: {str(exc).splitlines()[0][:100]}", "", ""]]
        print("\n".join("| " + " | ".join(str(c) for c in row) + " |" for row in rows), flush=True)
        print(f"{section}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
