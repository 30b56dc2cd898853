"""Validation: contrastive loss, image↔text retrieval, alignment/uniformity and the learned temperature.

Retrieval and geometry come from :mod:`medclip.eval.retrieval` (a hit is the paired report or any
report with identical text), as is ``chance_R@K``: what a random ranking scores with the same duplicates.
Under ``torchrun`` every process encodes a contiguous slice of the split and the features are gathered,
so validation takes 1/world of the time and no process idles near the collective timeout.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Subset

from ..eval.retrieval import chance_recall, embedding_metrics
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
    metrics = embedding_metrics(img, txt, reports) if len(img) > 1 else {}
    out = {"val_loss": loss, "logit_scale": float(scalars["logit_scale"]), "val_n": len(img),
           "val_n_distinct_texts": len(set(" ".join(t.split()) for t in reports))}
    out.update({f"val_{k}": float(v) for k, v in metrics.items() if k != "n"})
    for k in (1, 5, 10):
        out[f"val_chance_R@{k}"] = chance_recall(reports, k)
    if len(img) > 2:  # permutation test against shuffled pairings (p-values and the null means)
        from ..eval.significance import retrieval_pvalues

        tests = retrieval_pvalues(img, txt, reports, max_work=2e8)
        out.update({f"val_{'p_' if k[:3] in ('i2t', 't2i') else ''}{k}": v for k, v in tests.items()})
    return out


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
