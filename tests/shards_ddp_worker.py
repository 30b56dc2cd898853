"""Worker for tests/test_data_shards.py under torchrun (gloo): one epoch of the trainer's data path, from the
prepared manifest (CSV) and from shards; each rank writes the image paths it saw (relative to the prepared folder).

    torchrun --nproc-per-node 2 shards_ddp_worker.py SHARDED_ROOT OUT_DIR
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from medclip.config import ModelConfig
from medclip.train.build import build_data, train_loader
from medclip.train.config import recipe_from_dict
from medclip.train.distributed import cleanup_distributed, init_distributed

if __name__ == "__main__":
    root, out = Path(sys.argv[1]), Path(sys.argv[2])
    torch.set_num_threads(1)
    info = init_distributed("cpu")
    for kind in ("csv", "shards"):
        data = {"manifest": str(root / "prep"), "augment": False}
        if kind == "shards":
            data["shards"] = str(root / "shards" / "{000000..000005}.tar")
        recipe = recipe_from_dict({"model": "tiny-vit", "data": data, "train": {"batch_size": 4, "seed": 0}})
        model_config = recipe.model if isinstance(recipe.model, ModelConfig) else None
        if model_config is None:
            import medclip

            model_config = medclip.create_model("tiny-vit").config
        source = build_data(recipe, model_config, info, out / f"run-{kind}")
        assert type(source).__name__ == {"csv": "CsvSource", "shards": "ShardSource"}[kind]
        paths = [os.path.relpath(p, root / "prep") if os.path.isabs(p) else p
                 for batch in train_loader(source, 0, 0, torch.device("cpu")) for p in batch["path"]]
        (out / f"{kind}{info.rank}.txt").write_text("\n".join(paths) + "\n")
    cleanup_distributed()
