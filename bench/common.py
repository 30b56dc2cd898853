"""Helpers shared by the benchmark scripts: real report text, interleaved timing, peak FLOP/s, tables.

Timing rule of every benchmark here: the two libraries run in the SAME process, alternating
(ours, open_clip, ours, open_clip, ...), and each side reports the median of its repetitions. Slow
drifts of a shared machine then hit both sides alike, so the *ratio* is trustworthy even when the
absolute numbers are noisy.
"""

from __future__ import annotations

import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MEDCLIP_SHARED_DATA", REPO.parent / "shared" / "data"))
IU_XRAY = SHARED_DATA / "reports" / "iu-xray-reports.tgz"

# Zero-shot prompts: a few chest findings x CLIP-style templates (5-15 tokens each).
CLASSES = ("normal", "pneumonia", "cardiomegaly", "pleural effusion", "pneumothorax", "atelectasis",
           "edema", "consolidation", "lung opacity", "fracture", "nodule", "emphysema", "fibrosis",
           "hernia", "mass", "covid-19")
TEMPLATES = ("a chest x-ray showing {}.", "a radiograph of {}.", "{}.", "a photo of a chest x-ray with {}.",
             "an x-ray image of the chest with findings of {}.", "a frontal chest radiograph: {}.",
             "there is {} on this chest x-ray.", "a chest x-ray of a patient with {}.")


def iu_xray_texts(sections: str) -> list[str]:
    """Report texts of the IU X-ray archive: ``"findings+impression"`` or ``"impression"``.

    Read with :func:`medclip.data.reports.read_iu_xray`. Reports whose requested sections are all empty
    are left out.
    """
    from medclip.data.reports import read_iu_xray

    if not IU_XRAY.is_file():
        sys.exit(f"benchmark data not found: {IU_XRAY} (set MEDCLIP_SHARED_DATA to the shared data folder)")
    rows = read_iu_xray(str(IU_XRAY)).to_dict("records")
    wanted = ("findings", "impression") if sections == "findings+impression" else ("impression",)
    texts = [" ".join(row[s] for s in wanted if row[s]) for row in rows]
    return [t for t in texts if t]


def zero_shot_prompts() -> list[str]:
    """``len(CLASSES) * len(TEMPLATES)`` prompts, as a zero-shot classifier would encode them."""
    return [t.format(c) for c in CLASSES for t in TEMPLATES]


def sample_batch(texts: list[str], batch: int, seed: int) -> list[str]:
    """A reproducible random batch of texts."""
    g = torch.Generator().manual_seed(seed)
    return [texts[i] for i in torch.randperm(len(texts), generator=g)[:batch].tolist()]


def interleaved(fns: dict, reps: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds per call of each function, calling them in turn ``A B A B ...``.

    Args:
        fns: name -> zero-argument callable.
        reps: timed rounds (each round calls every function once).
        warmup: untimed rounds first.

    Returns:
        name -> median seconds.
    """
    times = {name: [] for name in fns}
    for round_index in range(warmup + reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            elapsed = time.perf_counter() - start
            if round_index >= warmup:
                times[name].append(elapsed)
    return {name: statistics.median(t) for name, t in times.items()}


def matmul_peak_flops(n: int = 2048, reps: int = 5) -> float:
    """Measured fp32 FLOP/s of a large square ``torch.mm`` (best of ``reps``): the machine's practical peak."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def text_forward_flops(lengths: list[int], width: int, layers: int, mlp_ratio: float, embed_dim: int) -> float:
    """Matmul FLOPs of a CLIP text-tower forward over sequences of these real lengths (no padding).

    Per layer and token: q, k, v, out projections (``4 W^2``) and the MLP (``2 W H``), times 2 for
    multiply-add; attention scores and values add ``2 * 2 * L * W`` per token (full ``L x L``, as SDPA
    computes it). The final projection adds ``2 W E`` per sequence.
    """
    hidden = int(width * mlp_ratio)
    per_token = 2 * (4 * width * width + 2 * width * hidden)
    total = 0.0
    for length in lengths:
        total += layers * (length * per_token + 4 * length * length * width) + 2 * width * embed_dim
    return total


def vision_forward_flops(tower: torch.nn.Module, image_size: int, in_chans: int = 3) -> float:
    """FLOPs of one image through an image tower, counted by ``torch.utils.flop_counter``."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    device = next(tower.parameters()).device
    with counter, torch.no_grad():
        tower(torch.randn(1, in_chans, image_size, image_size, device=device))
    return float(counter.get_total_flops())


def cpu_name() -> str:
    """CPU model name from /proc/cpuinfo (Linux), else ``platform.processor()``."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
        if match:
            return match.group(1).strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line() -> str:
    """One line naming the CPU, core count, torch version and threads."""
    return (f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def copy_open_clip_text(ours: torch.nn.Module, ref: torch.nn.Module) -> None:
    """Load an open_clip CLIP's text tower into our ``CLIPTextTransformer`` through medclip's own converter.

    Args:
        ours: ``model.text`` of a medclip CLIP with the same text sizes (strict load: every weight copied).
        ref: an ``open_clip`` CLIP.
    """
    from medclip.interop.open_clip import convert_open_clip_state

    state = convert_open_clip_state(ref.state_dict())
    ours.load_state_dict({k[len("text."):]: v for k, v in state.items() if k.startswith("text.")})


def same_weight_pair(arch: str):
    """open_clip's ``arch`` with random weights (seed 0) and ours holding the same weights, on CPU.

    Returns:
        ``(ours, theirs)``; open_clip's model returns dicts from ``forward``.
    """
    import open_clip

    import medclip
    from medclip.interop.open_clip import convert_open_clip_state

    torch.manual_seed(0)
    theirs = open_clip.create_model(arch, output_dict=True)
    ours = medclip.create_model(arch)
    ours.load_state_dict(convert_open_clip_state(theirs.state_dict()))  # strict: every weight copied
    return ours, theirs
