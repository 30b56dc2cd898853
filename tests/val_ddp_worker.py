"""Worker for tests/test_train_ddp.py: validation metrics of a tiny model on 11 synthetic pairs, computed by
``validate`` under torchrun (gloo; each rank encodes and scores a share) or in one process; rank 0 writes them
as JSON, and every rank writes ``OUT.rankR.json``: the shares it scored (query rows, pair rows, permutations)."""

from __future__ import annotations

import json
import sys

import torch

from medclip.loss import get_loss
from medclip.train.build import build_model
from medclip.train.config import recipe_from_dict
from medclip.train.distributed import cleanup_distributed, init_distributed
from medclip.train.validate import validate


class Pairs(torch.utils.data.Dataset):
    """11 fixed image/report pairs (two reports repeat, so duplicate-aware retrieval is exercised)."""

    def __init__(self, n: int = 11):
        import medclip

        g = torch.Generator().manual_seed(1)
        self.images = torch.randn(n, 1, 64, 64, generator=g)
        self.texts = [f"finding {i % 9}" for i in range(n)]
        self.tokens = medclip.get_tokenizer("tiny-vit")(self.texts)

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "text": self.tokens[i]}


def _recording(shares: dict):
    """Wrap what validation scores per process so that each call's share is written down in ``shares``."""
    import medclip.eval.significance as significance
    import medclip.train.validate as validate_module

    ranks, lse, draws = (validate_module.retrieval_ranks, validate_module.uniformity_logsumexp,
                         significance.permutation_draws)

    def retrieval_ranks(img, txt, texts, rows=None, **kw):
        shares.setdefault("queries", []).append([rows.start, rows.stop])
        return ranks(img, txt, texts, rows, **kw)

    def uniformity_logsumexp(x, rows, *a, **kw):
        shares.setdefault("pair_rows", []).append([rows.start, rows.stop])
        return lse(x, rows, *a, **kw)

    def permutation_draws(*a, **kw):
        out = draws(*a, **kw)
        shares.setdefault("permutations", []).append(len(out[1]))
        return out

    validate_module.retrieval_ranks, validate_module.uniformity_logsumexp = retrieval_ranks, uniformity_logsumexp
    significance.permutation_draws = permutation_draws


def metrics(shares: dict | None = None) -> tuple[dict, object]:
    """``validate`` on this process's share of the pairs (all of them without a process group)."""
    import contextlib

    if shares is not None:
        _recording(shares)

    torch.set_num_threads(1)
    info = init_distributed("cpu")
    recipe = recipe_from_dict({"model": "tiny-vit", "train": {"seed": 0}})
    _, core = build_model(recipe, info)
    loader = torch.utils.data.DataLoader(Pairs(), batch_size=4)
    return validate(core, loader, info.device, contextlib.nullcontext, get_loss("tiled"), 4), info


if __name__ == "__main__":
    scored: dict = {}
    result, info = metrics(scored)
    if info.is_main:
        with open(sys.argv[1], "w", encoding="utf-8") as f:
            json.dump(result, f)
    with open(f"{sys.argv[1]}.rank{info.rank}.json", "w", encoding="utf-8") as f:
        json.dump(scored, f)
    cleanup_distributed()
