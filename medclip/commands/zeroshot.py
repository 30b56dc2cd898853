"""``medclip zeroshot``: classify images by text prompts and evaluate (probabilities CSV + metrics JSON)."""

from __future__ import annotations

from ..defaults import EVAL_BATCH_SIZE, N_BOOTSTRAP


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="model folder written by save_pretrained / medclip pretrain")
    parser.add_argument("--manifest", required=True,
                        help="manifest CSV (image, label columns, optional patient_id/split) or a folder "
                             "with one subfolder per class")
    parser.add_argument("--classes", required=True,
                        help="class file (YAML), e.g. recipes/classes/pneumonia-kermany.yaml")
    parser.add_argument("--output", default=None, help="folder for probabilities.csv, metrics.json and figures")
    parser.add_argument("--split", default=None,
                        help="evaluate only rows of this split of the manifest (e.g. test)")
    parser.add_argument("--calibrate-on", default=None, metavar="SPLIT",
                        help="fit temperature scaling on this split (e.g. val); metrics use the other rows")
    parser.add_argument("--val-fraction", type=float, default=0.2,
                        help="patients held out for calibration when the manifest has no split column")
    parser.add_argument("--bootstrap", type=int, default=N_BOOTSTRAP, help="bootstrap resamples for the 95%% CIs")
    parser.add_argument("--bootstrap-unit", choices=("patient", "image"), default="patient",
                        help="resample patients (cluster bootstrap, default) or single images")
    parser.add_argument("--threshold", type=float, default=0.5, help="decision threshold for F1/accuracy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=EVAL_BATCH_SIZE)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers for image decoding")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--cache-dir", default=None,
                        help="prompt-embedding cache (default $MEDCLIP_CACHE_DIR/prompts or ~/.cache/medclip/prompts)")
    parser.add_argument("--no-cache", action="store_true", help="do not read or write the prompt cache")
    parser.add_argument("--max-images", type=int, default=None,
                        help="evaluate a seeded random (class-stratified) subset of this many images")
    parser.add_argument("--no-figures", action="store_true", help="skip the PNG figures")


def run(args) -> int:
    import os
    import sys

    from ..eval.prompts import default_cache_dir, load_class_file
    from ..eval.zeroshot import run_zeroshot
    from ..model import CLIP
    from . import checks

    checks.in_range("--threshold", args.threshold, 0, 1, low_open=True, high_open=True)
    checks.in_range("--bootstrap", args.bootstrap, 10)
    checks.in_range("--batch-size", args.batch_size, 1)
    checks.in_range("--workers", args.workers, 0)
    checks.in_range("--val-fraction", args.val_fraction, 0, 1, low_open=True, high_open=True)
    checks.in_range("--max-images", args.max_images, 1)
    classes = load_class_file(args.classes)  # validate before loading the model
    device = checks.device(args.device)
    checks.output_folder("--output", args.output)  # before any image is scored
    cache = None if args.no_cache else (args.cache_dir or default_cache_dir())
    if cache:
        checks.cache_folder(cache, "prompt-embedding")
    model = CLIP.from_pretrained(args.model).to(device)
    result = run_zeroshot(model, args.manifest, classes, args.output, calibrate_on=args.calibrate_on,
                          val_fraction=args.val_fraction, n_bootstrap=args.bootstrap, seed=args.seed,
                          threshold=args.threshold, bootstrap_unit=args.bootstrap_unit,
                          batch_size=args.batch_size, num_workers=args.workers, cache_dir=cache,
                          figures=not args.no_figures, max_images=args.max_images, split=args.split,
                          run_info={"model": os.path.abspath(args.model), "classes_file": os.path.abspath(args.classes),
                                    "argv": sys.argv[1:]})
    print(summary(result))
    if args.output:
        print(f"wrote {args.output}/probabilities.csv and {args.output}/metrics.json")
    else:
        print("nothing saved (no --output): add --output DIR for probabilities.csv, metrics.json and figures")
    return 0


def summary(result) -> str:
    """A few human-readable lines: per-class AUROC with CI, accuracy, ECE."""
    m = result.metrics
    lines = [f"{m['n_images']} images ({m['n_quarantined']} unreadable), {m['n_evaluated']} evaluated, "
             f"task {m['task']}, temperature {m['temperature']:.3f}"]
    if "metrics" not in m:
        return "\n".join([*lines, m.get("note", "")])
    undefined = m.get("auroc_undefined", [])
    tests = auroc_verdicts(result)
    for name in [*m["classes"], "macro"]:
        key = "auroc_macro" if name == "macro" else f"auroc/{name}"
        a = m["metrics"][key]
        if name in undefined:
            lines.append(f"  AUROC {name:<24} undefined: one label value only among its known labels "
                         f"({m['n_positive'][name]} positive); left out of the macro")
            continue
        label = f"macro ({len(m['classes']) - len(undefined)} of {len(m['classes'])})" if name == "macro" and \
            undefined else name
        verdict = f"  ({tests[name]['text']})" if name in tests else ""
        lines.append(f"  AUROC {label:<24} {a['value']:.3f}  95% CI [{a['ci_low']:.3f}, {a['ci_high']:.3f}]{verdict}")
    acc = m["metrics"]["accuracy"]
    lines.append(f"  accuracy {acc['value']:.3f} [{acc['ci_low']:.3f}, {acc['ci_high']:.3f}]  "
                 f"ECE {m['calibration']['ece']:.3f} (before scaling {m['calibration']['ece_before_scaling']:.3f})")
    return "\n".join(lines)


def auroc_verdicts(result, n_bootstrap: int = 1000) -> dict[str, dict]:
    """Per class: is its AUROC above 0.5? Bootstrap test (patient-level), Holm-corrected over the classes."""
    import numpy as np

    from ..eval.significance import auroc_test, verdicts
    from ..eval.zeroshot import _cluster_ids

    mask = result.eval_mask()
    if not mask.any():
        return {}
    y, probs = result.task.indicator(result.labels()[mask]), result.probs()[mask]
    groups, pvalues = _cluster_ids(result.table[mask]), {}
    for c, name in enumerate(result.classes.names):
        known = y[:, c][~np.isnan(y[:, c])]
        if known.size and 0 < known.sum() < known.size:
            pvalues[name] = auroc_test(y[:, c], probs[:, c], groups, n_bootstrap)["p"]
    return verdicts(pvalues)
