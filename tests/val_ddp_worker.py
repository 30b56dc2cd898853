"""Worker for tests/test_train_ddp.py: validation metrics of a tiny model on 11 synthetic pairs, computed by
``validate`` under torchrun (gloo; each rank encodes a slice) or in one process; rank 0 writes them as JSON."""

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


def metrics() -> tuple[dict, object]:
    """``validate`` on this process's share of the pairs (all of them without a process group)."""
    import contextlib

    torch.set_num_threads(1)
    info = init_distributed("cpu")
    recipe = recipe_from_dict({"model": "tiny-vit", "train": {"seed": 0}})
    _, core = build_model(recipe, info)
    loader = torch.utils.data.DataLoader(Pairs(), batch_size=4)
    return validate(core, loader, info.device, contextlib.nullcontext, get_loss("tiled"), 4), info


if __name__ == "__main__":
    result, info = metrics()
    if info.is_main:
        with open(sys.argv[1], "w", encoding="utf-8") as f:
            json.dump(result, f)
    cleanup_distributed()
