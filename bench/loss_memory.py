"""Dense vs tiled contrastive losses (InfoNCE and SigLIP): peak memory increase and time of forward + backward.

Each (method, N) runs in its own subprocess so peak RSS (``ru_maxrss``) is not polluted by other
runs. The increase is measured over the process peak after the ``(N, d)`` features exist, so it is the
loss's own extra memory (logits, softmax, gradients). ``dense`` is open_clip's ``ClipLoss`` (open_clip
is required); ``tiled`` is :func:`medclip.loss.tiled_clip_loss`. ``sig-ref`` is open_clip's ``SigLipLoss``
(N × N logits) and ``siglip`` is :func:`medclip.loss.siglip_loss` (streamed, logit bias −10, scale 10).
``floor`` runs only the tiled loss's four ``N × N × d`` fp32 matmuls (same blocks, no exp or reductions): no
exact two-pass streamed InfoNCE can beat it, so dense / floor is the largest speed-up this machine allows.
The floor line also times this machine's best fp32 GEMM (a 4096³ product or the loss's block shape): the
faster of the two ways to run the four matmuls bounds the time of any exact two-pass streamed InfoNCE from
below, whatever its blocking.
``cpu s`` is the process's CPU time (both threads), steadier than wall time on a shared machine.

Usage::

    python bench/loss_memory.py            # N = 4096, 16384, 32768, d = 512
    python bench/loss_memory.py --quick    # one timed repeat; skips dense at N = 32768 (needs ~20 GiB)

The summary lines: dense / tiled time and memory at N = 16384, the matmul bound, the SigLIP memory.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _dense_fn():
    from open_clip.loss import ClipLoss

    loss = ClipLoss()
    return "open_clip.ClipLoss", lambda i, t, s: loss(i, t, s)


def _loss_fn(method: str):
    """(implementation name, fn(img, txt, scale, bias)) of a bench method."""
    from medclip.loss import siglip_loss, tiled_clip_loss

    if method == "dense":
        name, fn = _dense_fn()
        return name, lambda i, t, s, b: fn(i, t, s)
    if method == "sig-ref":
        from open_clip.loss import SigLipLoss

        return "open_clip.SigLipLoss", SigLipLoss()
    if method == "siglip":
        return "medclip.siglip_loss", siglip_loss
    if method == "floor":
        return "4 fp32 matmuls (tiled)", _matmul_floor
    return "medclip.tiled_clip_loss", lambda i, t, s, b: tiled_clip_loss(i, t, s)


def _matmul_floor(img, txt, scale, bias):
    """The tiled InfoNCE's matmuls alone: pass 1 ``S = I Tᵀ`` per row block, pass 2 ``S``, ``P T``, ``Pᵀ I``."""
    import torch

    from medclip.loss import INFONCE_TILE_ELEMENTS, _blocks

    img, txt, n = img.detach(), txt.detach(), img.shape[0]
    blocks = _blocks(n, None, INFONCE_TILE_ELEMENTS)  # the loss's own row blocks
    buffer, grad_img, grad_txt = img.new_empty(blocks[0][1], n), torch.empty_like(img), torch.zeros_like(txt)
    for start, end in blocks:
        torch.mm(img[start:end], txt.T, out=buffer[: end - start])
    for start, end in blocks:
        block = torch.mm(img[start:end], txt.T, out=buffer[: end - start])
        torch.mm(block, txt, out=grad_img[start:end])
        grad_txt.addmm_(block.T, img[start:end])
    return torch.full((), float("nan"), requires_grad=True)  # no loss: backward is a no-op


def best_gemm_gflops(repeats: int = 3) -> float:
    """This machine's best fp32 GEMM rate (GFLOP/s): the faster of a 4096³ product and the tiled loss's
    2048 × 512 × 16384 block shape, best of ``repeats`` each."""
    import torch

    best = 0.0
    for m, k, n in ((4096, 4096, 4096), (2048, 512, 16384)):
        a, b = torch.randn(m, k), torch.randn(k, n)
        torch.mm(a, b)  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            torch.mm(a, b)
            best = max(best, 2 * m * k * n / (time.perf_counter() - start) / 1e9)
    return best


def measure(method: str, n: int, dim: int, repeats: int) -> dict:
    """Run one method in this process; return time (best of ``repeats``) and peak RSS increase."""
    import torch

    torch.manual_seed(0)
    name, fn = _loss_fn(method)
    img = torch.nn.functional.normalize(torch.randn(n, dim), dim=1).requires_grad_()
    txt = torch.nn.functional.normalize(torch.randn(n, dim), dim=1).requires_grad_()
    siglip = method in ("siglip", "sig-ref")
    scale = torch.tensor(10.0 if siglip else 14.3, requires_grad=True)
    bias = torch.tensor(-10.0, requires_grad=True)
    base = _rss_mib()
    times, cpu = [], []
    for _ in range(repeats):
        img.grad = txt.grad = scale.grad = bias.grad = None
        start, start_cpu = time.perf_counter(), time.process_time()
        loss = fn(img, txt, scale, bias)
        loss.backward()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return {"method": method, "impl": name, "n": n, "d": dim, "loss": float(loss.detach()), "seconds": min(times),
            "cpu_seconds": min(cpu), "peak_extra_mib": _rss_mib() - base}


def _print_floor(n: int, dim: int, dense: dict, tiled: dict, floor: dict) -> None:
    """The largest speed-up over dense that any exact two-pass streamed InfoNCE can have on this machine: four
    ``N × N × d`` fp32 matmuls, timed as the tiled loss runs them (``floor``) and at the best GEMM rate measured
    here (whichever is faster)."""
    flops = 4 * 2 * n * n * dim
    gemm = subprocess.run([sys.executable, __file__, "--child", "gemm", "0"], capture_output=True, text=True)
    rate = json.loads(gemm.stdout.strip().splitlines()[-1])["gflops"] if gemm.returncode == 0 else 0.0
    at_rate = flops / (rate * 1e9) if rate else float("inf")
    best = min(floor["seconds"], at_rate)
    print(f"N={n}: the four matmuls alone take {floor['seconds']:.2f} s as tiled runs them "
          f"({flops / floor['seconds'] / 1e9:.0f} GFLOP/s; {floor['cpu_seconds']:.2f} s CPU), {at_rate:.2f} s at this "
          f"machine's best fp32 GEMM rate ({rate:.0f} GFLOP/s): no exact streamed InfoNCE beats dense by "
          f"more than {dense['seconds'] / best:.2f}x here; tiled is {dense['seconds'] / tiled['seconds']:.2f}x, "
          f"{best / tiled['seconds']:.0%} of that bound")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384, 32768])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats, best kept (default 2, --quick 1)")
    parser.add_argument("--quick", action="store_true", help="one repeat; skip dense at N >= 32768")
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.repeats = args.repeats or (1 if args.quick else 2)
    if args.child:
        if args.child[0] == "gemm":
            print(json.dumps({"gflops": best_gemm_gflops()}))
        else:
            print(json.dumps(measure(args.child[0], int(args.child[1]), args.dim, args.repeats)))
        return
    results = {}
    print(f"{'method':<8}{'impl':<26}{'N':>7}{'seconds':>10}{'cpu s':>8}{'extra MiB':>11}{'loss':>10}")
    for n in args.sizes:
        for method in ("dense", "tiled", "floor", "sig-ref", "siglip"):
            if method in ("dense", "sig-ref") and args.quick and n >= 32768:
                print(f"{method:<8}{'(skipped: --quick)':<26}{n:>7}")
                continue
            cmd = [sys.executable, __file__, "--child", method, str(n), "--dim", str(args.dim),
                   "--repeats", str(args.repeats)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:  # e.g. out of memory: the kernel's SIGKILL leaves no message
                lines = proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"]
                print(f"{method:<8}{'(failed: ' + lines[-1][:60] + ')':<26}{n:>7}")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            results[(method, n)] = r
            print(f"{method:<8}{r['impl']:<26}{n:>7}{r['seconds']:>10.2f}{r['cpu_seconds']:>8.2f}"
                  f"{r['peak_extra_mib']:>11.0f}{r['loss']:>10.4f}")
    key = 16384 if ("dense", 16384) in results and ("tiled", 16384) in results else None
    if key:
        d, t = results[("dense", key)], results[("tiled", key)]
        print(f"N={key} d={args.dim}: tiled is {d['seconds'] / t['seconds']:.2f}x faster than dense and uses "
              f"{d['peak_extra_mib'] / max(t['peak_extra_mib'], 1):.1f}x less extra memory "
              f"({t['peak_extra_mib']:.0f} vs {d['peak_extra_mib']:.0f} MiB); CPU time "
              f"{d['cpu_seconds'] / t['cpu_seconds']:.2f}x")
        f = results.get(("floor", key))
        if f:
            _print_floor(key, args.dim, d, t, f)
    else:
        print("key ratio unavailable: run with N = 16384 for both methods")
    sig = [n for n in args.sizes if ("siglip", n) in results]
    if sig:
        r = results[("siglip", max(sig))]
        ref = results.get(("sig-ref", max(sig)))
        ratio = f"{ref['seconds'] / r['seconds']:.2f}x faster than open_clip.SigLipLoss, " if ref else ""
        print(f"N={max(sig)} d={args.dim}: siglip is {ratio}{r['peak_extra_mib']:.0f} MiB extra memory")


if __name__ == "__main__":
    main()
