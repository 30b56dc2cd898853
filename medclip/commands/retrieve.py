"""``medclip retrieve``: image<->report retrieval metrics of a saved model on a manifest."""

from __future__ import annotations

from ..defaults import EVAL_BATCH_SIZE
from ..version import __version__


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="model folder written by save_pretrained / medclip pretrain")
    parser.add_argument("--manifest", required=True, help="manifest CSV with image and report columns")
    parser.add_argument("--split", default=None, help="evaluate only this split (e.g. test); default: all rows")
    parser.add_argument("--sections", nargs="*", default=["findings", "impression"],
                        help="report sections used as text; '--sections' with none given: the whole report "
                             "(as recipes with data.sections: null, e.g. cxr-lite on covid-cxr-notes)")
    parser.add_argument("--ks", nargs="+", type=int, default=[1, 5, 10], help="K values of Recall@K")
    parser.add_argument("--output", default=None, help="folder for retrieval.json (and quarantine.csv)")
    parser.add_argument("--batch-size", type=int, default=EVAL_BATCH_SIZE)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--device", default=None, help="cpu, cuda ... (default: cuda when available)")


def run(args) -> int:
    import json
    import os

    from ..eval.retrieval import evaluate_retrieval
    from ..eval.zeroshot import json_safe
    from ..model import CLIP
    from . import checks

    checks.in_range("--batch-size", args.batch_size, 1)
    checks.in_range("--workers", args.workers, 0)
    for k in args.ks:
        checks.in_range("--ks", k, 1)
    device = checks.device(args.device)
    checks.output_folder("--output", args.output)  # before any image is scored
    model = CLIP.from_pretrained(args.model).to(device)
    metrics, quarantine = evaluate_retrieval(model, args.manifest, args.split, args.sections or None, args.ks,
                                             args.batch_size, args.workers)
    metrics.update({"model": os.path.abspath(args.model), "manifest": os.path.abspath(args.manifest),
                    "medclip_version": __version__})
    print(f"{metrics['n']} pairs ({metrics['n_distinct_texts']} distinct reports, {metrics['n_quarantined']} "
          "quarantined)")
    print(verdict_lines(metrics, args.ks))
    print(f"  alignment {metrics['alignment']:.3f}  uniformity image {metrics['uniformity_image']:.3f} "
          f"text {metrics['uniformity_text']:.3f}")
    if args.output:
        os.makedirs(args.output, exist_ok=True)
        with open(os.path.join(args.output, "retrieval.json"), "w", encoding="utf-8") as f:
            json.dump(json_safe(metrics), f, indent=2)
        if len(quarantine):
            from ..data.csvsafe import write_csv

            write_csv(quarantine, os.path.join(args.output, "quarantine.csv"))
        print(f"wrote {args.output}/retrieval.json")
    else:
        print("nothing saved (give --output DIR for retrieval.json)")
    return 0


def verdict_lines(metrics: dict, ks) -> str:
    """Recall@K per direction with the permutation test's chance level and a Holm-corrected verdict."""
    from ..eval.significance import verdicts

    tests = verdicts({f"{d}_R@{k}": metrics[f"p_{d}_R@{k}"] for d in ("i2t", "t2i") for k in ks
                      if f"p_{d}_R@{k}" in metrics})
    lines = []
    for direction, name in (("i2t", "image->text"), ("t2i", "text->image")):
        lines.append(f"  {name}: median rank {metrics[f'{direction}_median_rank']:.1f}")
        for k in ks:
            key = f"{direction}_R@{k}"
            chance = metrics.get(f"null_{key}", metrics[f"chance_R@{k}"])
            verdict = tests[key]["text"] if key in tests else "too few pairs to test"
            lines.append(f"    R@{k} {metrics[key]:.3f} vs chance {chance:.3f} ({verdict})")
    if tests:
        lines.append(f"  chance = mean R@K over {metrics['n_permutations']} shuffled pairings (same reports, "
                     f"duplicates count as hits); Holm-corrected over the {len(tests)} verdicts")
    return "\n".join(lines)
