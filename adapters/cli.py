"""Command functions behind ``medclip <method>`` (one per registered method) and ``medclip fewshot``.

``medclip/commands/fewshot.py`` forwards here (importing this package only when such a command runs);
the command list comes from the method registry (:func:`command_help`).
One method: ``medclip coop --model DIR --manifest M --classes C.yaml --shots 16 --seed 1 --output DIR``.
The grid: ``medclip fewshot --methods all --shots 1,2,4,8,16 --seeds 1,2,3,4,5 ...``.
"""

from __future__ import annotations

import argparse
import os

from medclip.errors import ConfigError

from .base import get_method_class, list_methods

GRID = "fewshot"
BASELINE = "zeroshot"  # every grid runs it; it is not a command of its own


def method_commands() -> list[str]:
    """The registered few-shot methods that are commands (``medclip coop`` ...): all but the baseline."""
    return [m for m in list_methods() if m != BASELINE]


def command_help() -> dict[str, str]:
    """command -> one-line help, from the method registry (what ``medclip --help`` lists)."""
    return {m: get_method_class(m).summary for m in method_commands()}


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    """Arguments of ``command`` (a method name or ``fewshot``)."""
    if command != GRID and command not in method_commands():
        raise ConfigError(f"unknown few-shot command '{command}' (available: {', '.join(method_commands())})")
    parser.set_defaults(fewshot_command=command)
    parser.add_argument("--model", required=True,
                        help="model folder (save_pretrained), config YAML or architecture name (random weights)")
    parser.add_argument("--manifest", required=True, help="manifest CSV, or a folder with one subfolder per class")
    parser.add_argument("--test-manifest", help="external test set (CSV or class folders): all its images are the "
                                                "test set; the shots still come from --manifest")
    parser.add_argument("--val-shots", type=int, help="validation shots per class (default min(shots, 4)); with 8 "
                                                      "or more the run chooses on them (zero-shot or not, CLIP-Adapter "
                                                      "ratio, accuracy threshold)")
    parser.add_argument("--classes", required=True, help="class file (recipes/classes/*.yaml)")
    parser.add_argument("--output", required=True, help="output folder")
    if command == GRID:
        parser.add_argument("--methods", default="all", help=f"comma list or 'all' ({','.join(method_commands())})")
        parser.add_argument("--shots", default="1,2,4,8,16", help="comma list of shots per class")
        parser.add_argument("--seeds", default="1,2,3,4,5", help="comma list of seeds")
    else:
        parser.add_argument("--shots", type=int, default=16, help="training shots per class")
        parser.add_argument("--seed", type=int, default=1, help="seed of the shot draw and of training")
        parser.add_argument("--split-csv", help="reuse a saved split (split.csv of an earlier run)")
    parser.add_argument("--epochs", type=int, help="CPU budget cut: epochs for coop/clip-adapter/tip-adapter -F")
    parser.add_argument("--max-iters", type=int, help="CPU budget cut: LoRA iterations cap")
    parser.add_argument("--max-test", type=int, help="CPU budget cut: evaluate on at most N test images")
    if command in ("coop", GRID):
        parser.add_argument("--n-ctx", type=int, help="CoOp context length (default 16)")
        parser.add_argument("--ctx-init", help="CoOp context initialisation phrase, e.g. 'a chest x-ray of a'")
        parser.add_argument("--csc", action="store_true", help="CoOp class-specific context")
        parser.add_argument("--class-token-position", choices=("end", "middle", "front"), help="CoOp class token")
    if command in ("clip-adapter", GRID):
        parser.add_argument("--ratio", type=float, help="CLIP-Adapter residual ratio (share of adapted features)")
    if command in ("tip-adapter", GRID):
        parser.add_argument("--finetune", action="store_true", help="Tip-Adapter-F: fine-tune the cache keys")
    if command in ("lora", GRID):
        parser.add_argument("--encoder", choices=("auto", "text", "vision", "both"), help="LoRA towers")
    parser.add_argument("--set", action="append", default=[], metavar="[METHOD.]KEY=VALUE",
                        help="any method hyperparameter, in medclip pretrain's --set grammar (value parsed as "
                             "YAML), e.g. lr=0.01 or coop.n_ctx=4")
    parser.add_argument("--cache-dir", help="image-feature cache folder (default: $MEDCLIP_CACHE_DIR/features)")
    parser.add_argument("--n-bootstrap", type=int, default=None, help="bootstrap resamples for the CIs")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def load_model(spec: str, device: str = "cpu"):
    """A model folder, a config/recipe YAML or a registered architecture name (randomly initialised)."""
    import medclip

    if os.path.isdir(spec):
        return medclip.from_pretrained(spec, map_location=device).eval()
    if spec in medclip.list_models() or spec.endswith((".yaml", ".yml")):
        import torch

        from medclip.config import ModelConfig, from_dict, load_yaml

        config = spec
        if spec.endswith((".yaml", ".yml")) and "model" in load_yaml(spec):  # a training recipe: its model section
            config = from_dict(ModelConfig, load_yaml(spec)["model"], "model")
        print(f"note: '{spec}' builds a model with untrained (random, seed 0) joint-embedding weights; "
              "point --model at a trained model folder for meaningful numbers")
        torch.manual_seed(0)
        return medclip.create_model(config, device=device).eval()
    raise ConfigError(f"--model {spec}: not a model folder, YAML config or architecture ({medclip.list_models()})")


FLAGS = ("epochs", "max_iters", "n_ctx", "ctx_init", "csc", "class_token_position", "ratio", "finetune", "encoder")


def method_hparams(args, method: str) -> dict:
    """Hyperparameter overrides for ``method`` from the flags and ``--set``.

    ``--set`` uses :func:`medclip.config.apply_overrides` (``medclip pretrain``'s grammar): ``KEY=VALUE``
    applies to the method (in a grid: to every method that has ``KEY``), ``METHOD.KEY=VALUE`` to one.
    """
    from medclip.config import apply_overrides

    names = get_method_class(method).option_names()
    flags = {k: getattr(args, k, None) for k in FLAGS}
    out = {k: v for k, v in flags.items() if v not in (None, False) and k in names}
    for key, value in apply_overrides({}, args.set).items():
        if isinstance(value, dict) and (key == method or key in list_methods()):
            out.update(value if key == method else {})
        elif key in names or args.fewshot_command != GRID:
            out[key] = value  # unknown keys of a single method fail in the method's config
    return out


def run(args) -> int:
    """Run one method or the grid; prints AUROC with its 95% CI."""
    from medclip.commands import checks

    from .base import method_config
    from .cache import FeatureCache
    from .fewshot import RunOptions, load_table, run_fewshot, run_grid

    command = args.fewshot_command
    for shots in _ints(args.shots, "--shots"):
        checks.in_range("--shots", shots, 1)
    for flag in ("epochs", "max_iters", "max_test", "n_bootstrap", "n_ctx"):
        checks.in_range(f"--{flag.replace('_', '-')}", getattr(args, flag, None), 1)
    checks.in_range("--val-shots", args.val_shots, 0)
    checks.in_range("--ratio", getattr(args, "ratio", None), 0, 1)
    methods = [command] if command != GRID else \
        [BASELINE, *(method_commands() if args.methods == "all" else [m.strip() for m in args.methods.split(",")])]
    hparams = {m: method_hparams(args, m) for m in methods}
    for m, values in hparams.items():  # every method option checked before any data or model is loaded
        method_config(get_method_class(m).config_class, values, m)
    checks.device(args.device)
    checks.output_folder("--output", args.output)  # before any image is encoded
    checks.cache_folder(args.cache_dir or _default_cache_dir(), "image-feature")
    task, table = load_table(args.manifest, args.classes)
    test_table = load_table(args.test_manifest, args.classes)[1] if args.test_manifest else None
    model = load_model(args.model, args.device)
    options = RunOptions(cache=FeatureCache(args.cache_dir or _default_cache_dir(), progress=not args.no_progress),
                         max_test=args.max_test, progress=not args.no_progress, test_table=test_table,
                         val_shots=args.val_shots)
    if command != GRID:
        options.hparams, options.split_csv = hparams[command], args.split_csv
        options.n_bootstrap = args.n_bootstrap if args.n_bootstrap is not None else 1000
        row = run_fewshot(command, model, task, table, args.shots, args.seed, args.output, options)
        chosen = " (the zero-shot classifier: it scored higher on validation)" \
            if row.get("selected_start") == "zeroshot" else ""
        print(f"{command} {args.shots}-shot seed {args.seed}{chosen}: AUROC {row['auroc']:.3f} "
              f"(95% CI {row['auroc_low']:.3f}-{row['auroc_high']:.3f}), accuracy {row['accuracy']:.3f} "
              f"(threshold {row['threshold']:.2f}), ECE {row['ece']:.3f} on {row['n_test']} test images "
              f"-> {args.output}")
        return 0
    options.hparams = hparams
    options.n_bootstrap = args.n_bootstrap if args.n_bootstrap is not None else 200
    results = run_grid(methods[1:], model, task, table, _ints(args.shots, "--shots"), _ints(args.seeds, "--seeds"),
                       args.output, options)
    print(f"{len(results)} runs -> {os.path.join(args.output, 'results.csv')}, summary.csv, fewshot_curve.png")
    return 0


def _ints(text: str, flag: str) -> list[int]:
    try:
        return [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{flag} must be a comma list of integers, got '{text}'") from None


def _default_cache_dir() -> str:
    root = os.environ.get("MEDCLIP_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "medclip")
    return os.path.join(root, "features")
