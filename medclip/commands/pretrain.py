"""``medclip pretrain --recipe recipes/X.yaml``: contrastive pretraining (also under ``torchrun``)."""

from __future__ import annotations

import os


def add_arguments(parser) -> None:
    parser.add_argument("--recipe", required=True, help="recipe YAML (sections model, data, train)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe value, e.g. --set train.lr=3e-4 (repeatable)")
    parser.add_argument("--output", default=None, help="run folder (default: runs/<recipe name>)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --output")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="stop cleanly (with a checkpoint) at this step; the lr schedule is unchanged")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="stop cleanly (with a checkpoint) after this many minutes")


def run(args) -> int:
    from pathlib import Path

    from ..eval.heldout_demo import pretrain_report
    from ..train.config import load_recipe
    from ..train.loop import train

    recipe = load_recipe(args.recipe, args.overrides)
    output = args.output or os.path.join("runs", Path(args.recipe).stem)
    result = train(recipe, output, resume=args.resume, max_steps=args.max_steps, max_minutes=args.max_minutes)
    if int(os.environ.get("RANK", "0")) == 0:
        print(summary(result, output))
        heldout = pretrain_report(os.path.join(output, "model"), recipe)
        if heldout:
            print(heldout)
    return 0


def summary(result: dict, output: str) -> str:
    """Human-readable end-of-run lines: loss trend and held-out retrieval against chance."""
    lines = [f"trained {result['step']} steps; model saved to {output}/model "
             f"(checkpoints, metrics.csv, loss_curve.png, tensorboard/ in {output})"]
    if result.get("first_loss") is not None and result.get("last_loss") is not None:
        trend = "fell" if result["last_loss"] < result["first_loss"] else "did NOT fall"
        lines.append(f"train loss {trend}: {result['first_loss']:.4f} (first step) -> {result['last_loss']:.4f} (last)")
    if "val_loss" in result:
        n, distinct = int(result["val_n"]), int(result["val_n_distinct_texts"])
        lines.append(f"held-out retrieval ({n} validation pairs, {distinct} distinct reports; "
                     f"val loss {result['val_loss']:.4f}, temperature 1/{result['logit_scale']:.1f}):")
        for k in (1, 5, 10):
            i2t, t2i, chance = result.get(f"val_i2t_R@{k}"), result.get(f"val_t2i_R@{k}"), result[f"val_chance_R@{k}"]
            if i2t is not None:
                verdict = "beats chance" if min(i2t, t2i) > chance else "not above chance"
                lines.append(f"  R@{k}: image->text {i2t:.3f}, text->image {t2i:.3f} "
                             f"vs chance {chance:.3f} ({verdict})")
    return "\n".join(lines)
