"""Dense vs tiled contrastive losses (InfoNCE and SigLIP): peak memory increase and time of forward + backward.

Each (method, N) runs in its own subprocess so peak RSS (``ru_maxrss``) is not polluted by other
runs. The increase is measured over the process peak after the ``(N, d)`` features exist, so it is the
loss's own extra memory (logits, softmax, gradients). ``dense`` is open_clip's ``ClipLoss`` (open_clip
is required); ``tiled`` is :func:`medclip.loss.tiled_clip_loss`. ``sig-ref`` is open_clip's ``SigLipLoss``
(N × N logits) and ``siglip`` is :func:`medclip.loss.siglip_loss` (streamed, logit bias −10, scale 10).

Usage::

    python bench/loss_memory.py            # N = 4096, 16384, 32768, d = 512
    python bench/loss_memory.py --quick    # one timed repeat; skips dense at N = 32768 (needs ~20 GiB)

The last line is the key ratio: dense / tiled time and memory at N = 16384.
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
    return "medclip.tiled_clip_loss", lambda i, t, s, b: tiled_clip_loss(i, t, s)


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
    times = []
    for _ in range(repeats):
        img.grad = txt.grad = scale.grad = bias.grad = None
        start = time.perf_counter()
        loss = fn(img, txt, scale, bias)
        loss.backward()
        times.append(time.perf_counter() - start)
    return {"method": method, "impl": name, "n": n, "d": dim, "loss": float(loss.detach()), "seconds": min(times),
            "peak_extra_mib": _rss_mib() - base}


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
        print(json.dumps(measure(args.child[0], int(args.child[1]), args.dim, args.repeats)))
        return
    results = {}
    print(f"{'method':<8}{'impl':<26}{'N':>7}{'seconds':>10}{'extra MiB':>11}{'loss':>10}")
    for n in args.sizes:
        for method in ("dense", "tiled", "sig-ref", "siglip"):
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
            print(f"{method:<8}{r['impl']:<26}{n:>7}{r['seconds']:>10.2f}{r['peak_extra_mib']:>11.0f}{r['loss']:>10.4f}")
    key = 16384 if ("dense", 16384) in results and ("tiled", 16384) in results else None
    if key:
        d, t = results[("dense", key)], results[("tiled", key)]
        print(f"N={key} d={args.dim}: tiled is {d['seconds'] / t['seconds']:.2f}x faster than dense and uses "
              f"{d['peak_extra_mib'] / max(t['peak_extra_mib'], 1):.1f}x less extra memory "
              f"({t['peak_extra_mib']:.0f} vs {d['peak_extra_mib']:.0f} MiB)")
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
