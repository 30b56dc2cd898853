"""CoOp epoch with cached image features vs re-encoding the images every step (same result, speed ratio).

Both variants train the same context vectors from the same seed on the same Kermany shots; the only
difference is where a batch's image features come from: the :class:`medclip_adapters.FeatureCache`
(computed once) or the frozen image tower run again on the (already decoded) images each step, as a
plain training loop would. The learned contexts must agree (up to float summation order), and the
cached epoch must be faster by about the cost of the image tower.

    python bench/coop_epoch.py --model ViT-B-32 --shots 16 --epochs 3
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import medclip_adapters as ma
import torch
import torch.nn.functional as F
from medclip_adapters.fewshot import load_table, sample_split

import medclip

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MEDCLIP_SHARED_DATA", REPO.parent / "shared" / "data")) / "pneumonia-kermany"


def train(model, task, train_frame, batch_features, epochs: int, seed: int) -> tuple[ma.FewShotMethod, float]:
    coop = ma.create_method("coop", model, task, seed=seed, epochs=epochs)
    y = torch.as_tensor(task.labels(train_frame))
    start = time.perf_counter()
    with ma.base.frozen(model):
        coop.train_prompts(batch_features, y)
    return coop, (time.perf_counter() - start) / epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-32", help="architecture (random weights) or model folder")
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=None, help="epochs per variant (default 3, --quick 2)")
    parser.add_argument("--quick", action="store_true", help="fewer epochs (the same model and shots)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    args.epochs = args.epochs or (2 if args.quick else 3)

    torch.manual_seed(0)
    model = medclip.from_pretrained(args.model) if os.path.isdir(args.model) else \
        medclip.create_model(args.model, vision={"in_chans": 1})
    model.eval()
    task, table = load_table(str(DATA), str(REPO / "recipes" / "classes" / "pneumonia-kermany.yaml"))
    split = sample_split(table, task, args.shots, args.seed)
    shots = split[split["fewshot_split"] == "train"].reset_index(drop=True)
    print(f"model {args.model}, {len(shots)} training images ({args.shots} shots x {len(task.classes)} classes), "
          f"{args.epochs} epochs, torch threads {torch.get_num_threads()}")

    cache = ma.FeatureCache()
    start = time.perf_counter()
    features = cache.features(model, shots["image"].tolist())
    print(f"feature cache fill (once): {time.perf_counter() - start:.2f} s")
    cached, t_cached = train(model, task, shots, lambda idx: features[idx], args.epochs, args.seed)

    transform, _ = cache._transform_for(model)
    images = torch.stack([transform(p) for p in shots["image"]])  # decoded once: only the tower re-runs

    def encode(idx: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return F.normalize(model.encode_image(images[idx]), dim=-1)

    fresh, t_fresh = train(model, task, shots, encode, args.epochs, args.seed)
    diff = (cached.learner.ctx - fresh.learner.ctx).abs().max().item()
    loss_diff = max(abs(a - b) for a, b in zip(cached.history, fresh.history))
    print(f"cached features : {t_cached:.3f} s/epoch, losses {[round(v, 5) for v in cached.history]}")
    print(f"re-encode images: {t_fresh:.3f} s/epoch, losses {[round(v, 5) for v in fresh.history]}")
    print(f"same result: max |ctx difference| {diff:.2e}, max |loss difference| {loss_diff:.2e} "
          f"({'OK' if diff < 1e-4 else 'MISMATCH'})")
    print(f"speed ratio (re-encode / cached epoch time): {t_fresh / t_cached:.1f}x")


if __name__ == "__main__":
    main()
