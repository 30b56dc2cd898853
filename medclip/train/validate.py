"""Validation: contrastive loss, image↔text retrieval, alignment/uniformity and the learned temperature.

Retrieval and geometry come from :mod:`medclip.eval.retrieval` (a hit is the paired report or any
report with identical text), as is ``chance_R@K``: what a random ranking scores with the same duplicates.
Under ``torchrun`` every process encodes a contiguous slice of the split and the features are gathered;
then every process scores a share (retrieval queries, uniformity rows balanced by pair count, permutations of
the significance test) and the shares are gathered back in order, so all processes get exactly the metrics
of one process in 1/world of the time, and none idles near the collective timeout.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from ..eval.retrieval import (
    alignment,
    chance_recall,
    distinct_texts,
    metrics_from_ranks,
    retrieval_ranks,
    uniformity_logsumexp,
)
from .distributed import gather_rows, rank_and_world


@torch.no_grad()
def validate(model, loader, device: torch.device, autocast, loss_fn, batch_size: int) -> dict:
    """Encode the whole split and compute ``val_*`` metrics (the model is left in eval mode).

    Call it on every process of a distributed run: each encodes its slice, all get the same metrics.

    Args:
        model: the unwrapped CLIP model.
        loader: a non-shuffled loader whose ``dataset.texts`` are the reports in loader order.
        device: where to run.
        autocast: zero-argument callable giving the run's autocast context.
        loss_fn: the training loss, averaged here over consecutive chunks of ``batch_size`` pairs.
        batch_size: chunk size of the validation loss (the training batch, so values compare).
    """
    model.eval()
    img, txt = _encode_slice(model, loader, device, autocast)
    scalars = {k: v.detach().float().cpu() for k, v in model.logit_params().items()}
    chunks = [(s, min(s + batch_size, len(img))) for s in range(0, len(img), batch_size)]
    chunks = [c for c in chunks if c[1] - c[0] > 1] or [(0, len(img))]
    loss = sum(float(loss_fn(img[a:b], txt[a:b], **scalars)) for a, b in chunks) / len(chunks)
    reports = list(loader.dataset.texts)
    out = {"val_loss": loss, "logit_scale": float(scalars["logit_scale"]), "val_n": len(img),
           "val_n_distinct_texts": distinct_texts(reports)}
    if len(img) > 1:
        out.update({f"val_{k}": float(v) for k, v in _geometry(img, txt, reports, device).items()})
    for k in (1, 5, 10):
        out[f"val_chance_R@{k}"] = chance_recall(reports, k)
    if len(img) > 2:  # permutation test against shuffled pairings (p-values and the null means)
        tests = _permutation_test(img, txt, reports, device)
        out.update({f"val_{'p_' if k[:3] in ('i2t', 't2i') else ''}{k}": v for k, v in tests.items()})
    return out


def _gather(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Every process's rows of ``t`` in rank order, through ``device`` (NCCL gathers CUDA tensors only)."""
    return gather_rows(t.to(device)).cpu() if rank_and_world()[1] > 1 else t


def _geometry(img: torch.Tensor, txt: torch.Tensor, reports: list[str], device: torch.device) -> dict:
    """:func:`~medclip.eval.retrieval.embedding_metrics` less ``n`` and ``n_distinct_texts`` (``validate`` has
    them), each process scoring its share of the rows."""
    rank, world = rank_and_world()
    n = len(img)
    i2t, t2i = retrieval_ranks(img, txt, reports, range(n * rank // world, n * (rank + 1) // world))
    out = metrics_from_ranks(_gather(i2t, device), _gather(t2i, device))  # distinct reports: counted by validate
    out["alignment"] = alignment(img, txt)
    pairs = np.concatenate([[0], np.cumsum(np.arange(n - 1, 0, -1))])  # pairs (i, j > i) before row i
    lo, hi = (int(np.searchsorted(pairs, pairs[-1] * r / world)) for r in (rank, rank + 1))  # equal pair counts
    for name, x in (("uniformity_image", img), ("uniformity_text", txt)):
        part = uniformity_logsumexp(x, range(lo, hi)).reshape(1)
        out[name] = float(torch.logsumexp(_gather(part, device), 0) - math.log(n * (n - 1) / 2))
    return out


def _permutation_test(img: torch.Tensor, txt: torch.Tensor, reports: list[str], device: torch.device) -> dict:
    """:func:`~medclip.eval.significance.retrieval_pvalues`, each process scoring every world-th permutation."""
    from ..eval.significance import permutation_draws, pvalues_from_draws

    rank, world = rank_and_world()
    observed, draws = permutation_draws(img, txt, reports, max_work=2e8, part=(rank, world))
    gathered = _gather(draws, device)  # rank r's draws are permutations r, r + world, ...
    counts = [len(range(r, len(gathered), world)) for r in range(world)]
    offsets = np.concatenate([[0], np.cumsum(counts)])
    order = [int(offsets[p % world]) + p // world for p in range(len(gathered))]
    return pvalues_from_draws(observed, gathered[order])


def _encode_slice(model, loader, device: torch.device, autocast) -> tuple[torch.Tensor, torch.Tensor]:
    """This process's contiguous slice of the loader's dataset, encoded, then gathered in dataset order."""
    rank, world = rank_and_world()
    if world > 1:
        n = len(loader.dataset)
        lo, hi = n * rank // world, n * (rank + 1) // world
        loader = DataLoader(Subset(loader.dataset, range(lo, hi)), batch_size=loader.batch_size,
                            num_workers=loader.num_workers)
    images, texts = [], []
    for batch in loader:
        with autocast():
            out = model(batch["image"].to(device), batch["text"].to(device))
        images.append(out["image_features"].float())
        texts.append(out["text_features"].float())
    empty = torch.zeros(0, model.config.embed_dim, device=device)
    img, txt = torch.cat(images) if images else empty, torch.cat(texts) if texts else empty
    return gather_rows(img).cpu(), gather_rows(txt).cpu()
