"""``medclip pretrain --recipe recipes/X.yaml``: contrastive pretraining (also under ``torchrun``)."""

from __future__ import annotations

import os


def add_arguments(parser) -> None:
    parser.add_argument("--recipe", required=True, help="recipe YAML (sections model, data, train)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe value, e.g. --set train.lr=3e-4 (repeatable)")
    parser.add_argument("--output", default=None, help="run folder (default: runs/<recipe name>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --output from its newest good checkpoint (recipe keys that are safe "
                             "to change, such as train.lr, may differ; others are refused)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start again in a used --output (its checkpoints, model/, logs are deleted first)")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="stop cleanly (with a checkpoint) at this step; the lr schedule is unchanged")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="stop cleanly (with a checkpoint) after this many minutes")


def run(args) -> int:
    from pathlib import Path

    from ..eval.heldout_demo import pretrain_report
    from ..train.config import load_recipe
    from ..train.loop import train
    from .checks import in_range, output_folder

    in_range("--max-steps", args.max_steps, 1)
    in_range("--max-minutes", args.max_minutes, 0, low_open=True)
    recipe = load_recipe(args.recipe, args.overrides)
    output = args.output or os.path.join("runs", Path(args.recipe).stem)
    output_folder("--output", output, create=False)  # an existing file or an unwritable place: one line up front
    result = train(recipe, output, resume=args.resume, max_steps=args.max_steps, max_minutes=args.max_minutes,
                   overwrite=args.overwrite)
    if int(os.environ.get("RANK", "0")) == 0:
        print(summary(result, output, pretrain_report(os.path.join(output, "model"), recipe)))
        if result.get("stopped_by"):
            print(budget_note(result, args, output))
    return 0


def budget_note(result: dict, args, output: str) -> str:
    """Two lines for a run a budget stopped: where it stopped in its plan, and the command that continues it."""
    import shlex

    budget = (f"the time budget ({args.max_minutes} min)" if args.max_minutes is not None else "the time budget "
              "(train.max_minutes)") if result["stopped_by"] == "time" else f"--max-steps {args.max_steps}"
    command = ["medclip", "pretrain", "--recipe", args.recipe, *[f"--set={o}" for o in args.overrides],
               "--output", output, "--resume"]
    return (f"stopped by {budget} after {result['step']} of {result['planned_steps']} planned steps (lr "
            f"{result['lr']:.3g}, mid-schedule); model/ holds this unfinished model. Continue with:\n  "
            f"{shlex.join(command)}")


def summary(result: dict, output: str, demo: dict | None = None) -> str:
    """Human-readable end-of-run lines: loss trend, held-out retrieval and (demo runs) the demo report.

    Every "above chance" verdict is a test (:mod:`medclip.eval.significance`): retrieval against
    shuffled pairings (``val_p_*`` from validation), AUROC against 0.5, the probe against random
    weights; the p-values of all verdicts printed here are Holm-corrected together.
    """
    from ..eval.heldout_demo import format_demo_report, report_pvalues
    from ..eval.significance import format_p, verdicts

    lines = [f"trained {result['step']} steps; model saved to {output}/model "
             f"(checkpoints, metrics.csv, loss_curve.png, tensorboard/ in {output})"]
    if result.get("first_loss") is not None and result.get("last_loss") is not None:
        trend = "fell" if result["last_loss"] < result["first_loss"] else "did NOT fall"
        lines.append(f"train loss {trend}: {result['first_loss']:.4f} (first step) -> {result['last_loss']:.4f} (last)")
    pvalues = {k[len("val_p_"):]: result[k] for k in result if k.startswith("val_p_") and "@" in k}
    pvalues.update(report_pvalues(demo) if demo else {})
    verdict = verdicts(pvalues)
    if "val_loss" in result:
        n, distinct = int(result["val_n"]), int(result["val_n_distinct_texts"])
        lines.append(f"held-out retrieval ({n} validation pairs, {distinct} distinct reports; "
                     f"val loss {result['val_loss']:.4f}, temperature 1/{result['logit_scale']:.1f}); "
                     "chance = shuffled pairings, p from the permutation test:")
        for k in (1, 5, 10):
            if f"val_i2t_R@{k}" not in result:
                continue
            parts = []
            for d, name in (("i2t", "image->text"), ("t2i", "text->image")):
                v = verdict.get(f"{d}_R@{k}")
                chance = result.get(f"val_null_{d}_R@{k}", result[f"val_chance_R@{k}"])
                parts.append(f"{name} {result[f'val_{d}_R@{k}']:.3f} vs chance {chance:.3f} "
                             f"({v['text'] if v else 'no test'})")
            lines.append(f"  R@{k}: {'; '.join(parts)}")
    if demo:
        lines.append(format_demo_report(demo, verdict))
    if pvalues:
        lines.append(f"(verdicts: one-sided tests at 0.05, Holm-corrected over the {len(pvalues)} printed here; "
                     f"smallest raw p {format_p(min(pvalues.values()))})")
    return "\n".join(lines)
