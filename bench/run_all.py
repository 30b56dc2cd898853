"""Run every benchmark script and write ``bench/results.md`` (date, CPU, torch, targets, full tables).

Each script runs in its own subprocess (``--quick`` passed through); a missing script or dependency
is an error, never a silent skip. ``--device``/``--precision`` go to the scripts that take them (train_step,
text_encode). The targets table reads each script's last ("key") line.

Usage::

    python bench/run_all.py --quick                       # ~10 min on 2 CPU cores
    python bench/run_all.py --device cuda --precision bf16
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import common  # noqa: E402

# script, takes --device/--precision, what it shows
SCRIPTS = (
    ("train_step.py", True, "training step pairs/s, ours vs open_clip"),
    ("text_encode.py", True, "text encoding texts/s, ours vs open_clip, same weights"),
    ("loss_memory.py", False, "tiled vs dense contrastive loss: memory and time"),
    ("data_throughput.py", False, "DICOM pipeline: first pass vs cached epoch"),
    ("coop_epoch.py", False, "CoOp prompt-tuning epoch"),
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer repetitions in every script")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--only", nargs="+", default=None, help="run only these scripts (e.g. text_encode.py)")
    p.add_argument("--timeout", type=int, default=1200, help="seconds per script")
    p.add_argument("--output", default=str(BENCH / "results.md"))
    return p.parse_args(argv)


def run_script(name: str, device_args: bool, args) -> dict:
    """Run one script; returns its output, exit code and wall time."""
    path = BENCH / name
    cmd = [sys.executable, str(path)] + (["--quick"] if args.quick else [])
    if device_args and (args.device != "cpu" or args.precision != "fp32"):
        cmd += ["--device", args.device, "--precision", args.precision]
    print(f"== {' '.join(cmd[1:])}", flush=True)
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
        output, code = proc.stdout.rstrip(), proc.returncode
        if code:
            output += "\n" + "\n".join(proc.stderr.strip().splitlines()[-5:])
    except subprocess.TimeoutExpired as exc:
        output, code = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or ""), -1
        output += f"\n(timed out after {args.timeout} s)"
    seconds = time.perf_counter() - start
    print(output + f"\n({seconds:.0f} s, exit {code})\n", flush=True)
    lines = [line for line in output.splitlines() if line.strip()]
    return {"name": name, "output": output, "code": code, "seconds": seconds, "key": lines[-1] if lines else ""}


def _number(pattern: str, text: str) -> float | None:
    match = re.search(pattern, text)
    return float(match.group(1)) if match else None


def targets(results: dict) -> list[list[str]]:
    """Rows ``target | measured | met`` read from the scripts' outputs (best effort for others' formats)."""
    def out(name):
        r = results.get(name, {})
        return r.get("output", "") if not r.get("code") else ""

    def row(target, value, goal, fmt="{:.2f}x", higher=True):
        if value is None:
            return [target, "not measured (see below)", "-"]
        met = value >= goal if higher else value <= goal
        return [target, fmt.format(value), "yes" if met else "NO"]

    train, text = out("train_step.py"), out("text_encode.py")
    loss, data = out("loss_memory.py"), out("data_throughput.py")
    return [
        row("train step ViT-B-32, F+I text >= 1.05x open_clip",
            _number(r"ViT-B-32/findings\+impression ([\d.]+)x", train), 1.05),
        row("train step ViT-B-32, IMPRESSION text >= 1.1x", _number(r"ViT-B-32/impression ([\d.]+)x", train), 1.1),
        row("train step RN50, F+I text >= 1.05x", _number(r"RN50/findings\+impression ([\d.]+)x", train), 1.05),
        row("train step RN50, IMPRESSION text >= 1.1x", _number(r"RN50/impression ([\d.]+)x", train), 1.1),
        row("zero-shot prompt encoding >= 3x, identical embeddings",
            _number(r"zero-shot prompts ([\d.]+)x", text), 3.0),
        row("tiled loss N=32768 extra memory <= 512 MiB",
            _number(r"(?m)^tiled\s+\S+\s+32768\s+[\d.]+\s+([\d.]+)", loss), 512, "{:.0f} MiB", higher=False),
        row("tiled loss N=16384 faster than open_clip dense",
            _number(r"N=16384.*?tiled is ([\d.]+)x faster", loss), 1.0),
        row("cached DICOM epoch >= 10x first pass", _number(r"cached/first-pass ratio: ([\d.]+)x", data), 10.0,
            "{:.1f}x"),
    ]


def write_results(path: str, args, results: dict, load: tuple) -> None:
    """The markdown report."""
    import open_clip
    import torch

    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    lines = [
        "# Benchmark results", "",
        f"- date: {when}",
        f"- CPU: {common.cpu_name()} ({os.cpu_count()} cores); device {args.device}, precision {args.precision}",
        f"- torch {torch.__version__}, open_clip {open_clip.__version__}, python {sys.version.split()[0]}",
        f"- command: `python bench/run_all.py{' --quick' if args.quick else ''}`",
        f"- machine load average (1 min) before / after: {load[0]:.1f} / {load[1]:.1f} on {os.cpu_count()} cores"
        + (" — other processes shared the machine, so absolute times are noisy; ratios come from interleaved"
           " repetitions in one process (medians), which cancels most of it" if max(load) > 1.5 else ""),
        "", "## Targets", "", common.markdown_table(["target", "measured", "met"], targets(results)), "",
    ]
    for name, _, what in SCRIPTS:
        r = results.get(name)
        if r is None:
            continue
        lines += [f"## {name} — {what}", ""]
        lines += [f"{r['seconds']:.0f} s, exit code {r['code']}.", "", "```text", r["output"], "```", ""]
    Path(path).write_text("\n".join(lines))


def main(argv=None) -> int:
    args = parse_args(argv)
    missing = [name for name, _, _ in SCRIPTS if not (BENCH / name).is_file()]
    if missing:
        sys.exit(f"benchmark scripts missing from {BENCH}: {', '.join(missing)}")
    load_before = os.getloadavg()[0]
    results = {}
    for name, device_args, _ in SCRIPTS:
        if args.only and name not in args.only:
            continue
        results[name] = run_script(name, device_args, args)
    write_results(args.output, args, results, (load_before, os.getloadavg()[0]))
    print(f"wrote {args.output}")
    for row in targets(results):
        print(" | ".join(row))
    return 0 if all(not r.get("code") for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
