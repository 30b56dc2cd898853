"""Worker for tests/test_train_ddp.py: one training step's loss and gradients, run under torchrun (gloo).

Every rank builds the same tiny model and the same global batch of 8 and takes its contiguous slice
(as ShardedBatchSampler does); rank 0 writes the loss and the DDP-averaged gradients, for the plain
step and for the GradCache step, with the tiled InfoNCE and with the SigLIP loss, to the safetensors
file named on the command line.
"""

from __future__ import annotations

import sys

import torch
from safetensors.torch import save_file

from medclip.train.build import build_model
from medclip.train.config import recipe_from_dict
from medclip.train.distributed import cleanup_distributed, init_distributed
from medclip.train.loop import forward_backward


def global_batch(n: int = 8) -> dict:
    import medclip

    g = torch.Generator().manual_seed(0)
    reports = ["no acute cardiopulmonary process", "right lower lobe opacity", "small left pleural effusion",
               "the heart is enlarged"]
    tokens = medclip.get_tokenizer("tiny-vit")([f"{reports[i % 4]} {i}" for i in range(n)])
    return {"image": torch.randn(n, 1, 64, 64, generator=g), "text": tokens}


def step_grads(gradcache_chunk: int = 0, loss: str = "tiled") -> dict:
    """Loss and gradients of one step on this rank's slice of the global batch."""
    torch.set_num_threads(1)
    info = init_distributed("cpu")
    recipe = recipe_from_dict({"model": "tiny-vit",
                               "train": {"seed": 0, "gradcache_chunk": gradcache_chunk, "loss": loss}})
    model, core = build_model(recipe, info)
    batch = global_batch()
    size = batch["image"].shape[0] // info.world_size
    local = {k: v[info.rank * size:(info.rank + 1) * size] for k, v in batch.items()}
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    loss = forward_backward(model, local, recipe.train, info.device, "fp32", scaler)
    out = {f"grad.{n}": p.grad.detach().clone() for n, p in core.named_parameters() if p.grad is not None}
    out["loss"] = torch.tensor(loss)
    return out, info


if __name__ == "__main__":
    results = {}
    for loss in ("tiled", "siglip"):
        for chunk in (0, 3):
            out, info = step_grads(chunk, loss)
            results.update({f"{loss}.chunk{chunk}.{k}": v for k, v in out.items()})
    if info.is_main:
        save_file(results, sys.argv[1])
    cleanup_distributed()
