"""The few-shot protocol: patient-level shot sampling, split CSVs, one run, and the method × shots × seeds grid.

* :func:`sample_split`: K shots per class drawn with the seed, validation ``min(K, 4)`` shots per
  class, test = every image of the patients used for neither (one patient never spans two splits).
  Multi-label tasks draw K positive and K negative images per condition.
* :func:`run_fewshot`: fit one method on one split and write a run folder (``config.json``,
  ``split.csv``, ``metrics.json``, ``predictions.csv``, ``adapter/``).
* :func:`run_grid`: every method × shots × seed plus the zero-shot baseline on the same test sets;
  ``results.csv``, ``summary.csv`` (mean and 95% CI over seeds) and ``fewshot_curve.png``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from medclip.data.csvsafe import unescape_frame, write_csv
from medclip.defaults import N_BOOTSTRAP
from medclip.errors import DataError, MissingFileError
from medclip.eval.task import Task
from medclip.version import __version__

from .base import create_method
from .cache import FeatureCache

SPLITS = ("train", "val", "test")


def load_table(manifest: str, classes: str) -> tuple[Task, pd.DataFrame]:
    """Task and labelled image table from a manifest CSV (or class-per-folder tree) and a class file.

    Unlabelled rows (single-label class -1, multi-label all unknown) are dropped: few-shot needs labels.
    """
    from medclip.eval.inputs import read_labelled_images
    from medclip.eval.prompts import load_class_file

    cf = load_class_file(classes)
    table = read_labelled_images(manifest, cf)
    task = Task.from_class_file(cf)
    table = table[task.labelled(task.labels(table))].reset_index(drop=True)
    if table["patient_id"].astype(str).str.len().eq(0).any():  # no patient key: one patient per image
        table["patient_id"] = np.where(table["patient_id"].astype(str) == "", table["image"], table["patient_id"])
    return task, table


def _draw(rng, table, eligible: np.ndarray, shots: int, used: set, what: str) -> list[int]:
    """Draw ``shots`` rows among ``eligible`` ones, each from a different, unused patient."""
    rows = rng.permutation(np.flatnonzero(eligible))
    picked = []
    for row in rows:
        patient = table["patient_id"].iat[row]
        if patient not in used:
            picked.append(int(row))
            used.add(patient)
            if len(picked) == shots:
                return picked
    raise DataError(f"not enough patients for {shots} {what} shot(s): found {len(picked)} unused patients "
                    f"(use fewer shots or a larger manifest)")


def sample_split(table: pd.DataFrame, task: Task, shots: int, seed: int,
                 val_shots: int | None = None) -> pd.DataFrame:
    """Assign ``train``/``val``/``test`` per row (column ``fewshot_split``), patient-level.

    Args:
        table: labelled images with ``image`` and ``patient_id``.
        task: which label columns to balance.
        shots: K training shots per class (per condition: K positives and K negatives).
        seed: the draw's seed.
        val_shots: validation shots per class (default ``min(K, 4)``).

    Returns:
        A copy of ``table`` with ``fewshot_split``.
    """
    rng = np.random.default_rng(seed)
    val_shots = min(shots, 4) if val_shots is None else val_shots
    groups = task.shot_groups(task.labels(table))
    used: set = set()
    split = np.full(len(table), "test", dtype=object)
    for name, count in (("train", shots), ("val", val_shots)):
        for eligible, what in groups:
            if count:
                split[_draw(rng, table, eligible, count, used, f"{name} '{what}'")] = name
    split[table["patient_id"].isin(used).to_numpy() & (split == "test")] = "unused"  # other images of shot patients
    out = table.copy()
    out["fewshot_split"] = split
    return out


def save_split(table: pd.DataFrame, path: str) -> None:
    """Write the drawn split (``image``, ``patient_id``, ``fewshot_split``) so a run repeats exactly."""
    write_csv(table[["image", "patient_id", "fewshot_split"]], path)


def apply_split_csv(table: pd.DataFrame, path: str) -> pd.DataFrame:
    """Reuse a saved split: every image of the CSV must be in ``table``."""
    if not os.path.exists(path):
        raise MissingFileError(f"split CSV not found: {path}")
    saved = unescape_frame(pd.read_csv(path, dtype=str, keep_default_na=False))
    if not {"image", "fewshot_split"} <= set(saved.columns):
        raise DataError(f"{path}: a split CSV needs the columns image and fewshot_split")
    lookup = dict(zip(saved["image"], saved["fewshot_split"]))
    missing = sorted(set(lookup) - set(table["image"]))
    if missing:
        raise DataError(f"{path}: {len(missing)} image(s) of the split are not in the manifest, e.g. {missing[0]}")
    out = table[table["image"].isin(lookup)].copy()
    out["fewshot_split"] = out["image"].map(lookup)
    return out.reset_index(drop=True)


def evaluate_probs(task: Task, frame: pd.DataFrame, probs: np.ndarray, n_bootstrap: int,
                   seed: int, threshold: float = 0.5) -> dict:
    """AUROC / accuracy with patient-level bootstrap CIs (:mod:`medclip.eval.metrics`) plus ECE."""
    from medclip.eval.calibration import expected_calibration_error
    from medclip.eval.metrics import evaluate

    y = task.labels(frame).astype(float)
    result = evaluate(y, probs, task.classes, task.kind, threshold, groups=frame["patient_id"].astype(str).tolist(),
                      n_bootstrap=n_bootstrap, seed=seed)
    result["ece"] = expected_calibration_error(probs, y, task.kind)
    return result


@dataclass
class RunOptions:
    """How a few-shot run draws, evaluates and reports (everything but the method, data and seed).

    Attributes:
        cache: the image-feature cache (a memory-only one when None).
        hparams: method overrides (:func:`run_grid`: method name -> overrides).
        split_csv: reuse a saved split instead of drawing one.
        max_test: evaluate on at most this many test images (a CPU budget cut).
        n_bootstrap: bootstrap resamples for the CIs.
        progress: show progress bars.
        test_table: an external test set (``--test-manifest``): all its images are the test set; the shots
            still come from the main table.
        val_shots: validation shots per class (default ``min(K, 4)``); 8 or more let the run choose on
            validation (:mod:`adapters.selection`).
    """

    cache: FeatureCache | None = None
    hparams: dict | None = None
    split_csv: str | None = None
    max_test: int | None = None
    n_bootstrap: int = N_BOOTSTRAP
    progress: bool = False
    test_table: pd.DataFrame | None = None
    val_shots: int | None = None


def _split_parts(model, table, options: RunOptions, seed: int):
    """train/val/test frames with features prefetched; unreadable test images quarantined, train/val ones fatal."""
    parts = {name: table[table["fewshot_split"] == name].reset_index(drop=True) for name in SPLITS}
    if options.test_table is not None:
        shots = set(parts["train"]["image"]) | set(parts["val"]["image"])
        overlap = sorted(shots & set(options.test_table["image"]))
        if overlap:
            raise DataError(f"--test-manifest holds {len(overlap)} image(s) drawn as shots from --manifest, e.g. "
                            f"{overlap[0]}; use a test set without the training images")
        parts["test"] = options.test_table.reset_index(drop=True)
    n_test_all, max_test = len(parts["test"]), options.max_test
    if max_test and n_test_all > max_test:
        parts["test"] = parts["test"].sample(n=max_test, random_state=seed).reset_index(drop=True)
    bad = dict(options.cache.prefetch(model, pd.concat([parts[n]["image"] for n in SPLITS]).tolist()))
    for name in ("train", "val"):
        broken = [p for p in parts[name]["image"] if p in bad]
        if broken:
            raise DataError(f"{broken[0]}: {bad[broken[0]]} (a {name} shot; fix or remove the image, or redraw)")
    quarantined = parts["test"][parts["test"]["image"].isin(bad)]
    parts["test"] = parts["test"][~parts["test"]["image"].isin(bad)].reset_index(drop=True)
    if len(parts["test"]) == 0:
        raise DataError("no test images left after drawing the shots (the manifest is too small)")
    return parts, n_test_all, quarantined, bad


def _run_split(table: pd.DataFrame, task: Task, shots: int, seed: int, options: RunOptions) -> pd.DataFrame:
    """The run's split: a saved one, or a fresh draw (the main table's test rows unused with a test table)."""
    table = apply_split_csv(table, options.split_csv) if options.split_csv else \
        sample_split(table, task, shots, seed, options.val_shots)
    if options.test_table is not None:
        table = table.assign(fewshot_split=table["fewshot_split"].replace({"test": "unused"}))
    return table


def run_fewshot(method: str, model, task: Task, table: pd.DataFrame, shots: int, seed: int,
                output: str | None = None, options: RunOptions | None = None) -> dict:
    """Draw (or reuse) a split, fit ``method``, evaluate on the test patients and write the run folder.

    The accuracy (and F1) threshold is the one chosen on validation when there was enough of it, else 0.5.

    Returns:
        A flat row: method, shots, seed, auroc (+ CI), accuracy (+ CI), ece, sizes, budget and timing.
    """
    options = options or RunOptions()
    options.cache = options.cache or FeatureCache(progress=options.progress)
    table = _run_split(table, task, shots, seed, options)
    parts, n_test_all, quarantined, bad = _split_parts(model, table, options, seed)
    start = time.time()
    adapter = create_method(method, model, task, cache=options.cache, seed=seed, progress=options.progress,
                            **(options.hparams or {}))
    adapter.fit(parts["train"], parts["val"])
    fit_s = time.time() - start
    probs = adapter.predict_proba(parts["test"])
    result = evaluate_probs(task, parts["test"], probs, options.n_bootstrap, seed, adapter.threshold)
    m = result["metrics"]
    row = {"method": method, "shots": shots, "seed": seed,
           "auroc": m["auroc_macro"]["value"], "auroc_low": m["auroc_macro"]["ci_low"],
           "auroc_high": m["auroc_macro"]["ci_high"], "accuracy": m["accuracy"]["value"],
           "accuracy_low": m["accuracy"]["ci_low"], "accuracy_high": m["accuracy"]["ci_high"], "ece": result["ece"],
           "threshold": adapter.threshold, "n_train": len(parts["train"]), "n_val": len(parts["val"]),
           "n_test": len(parts["test"]), "n_test_all": n_test_all, "max_test": options.max_test or "",
           "n_quarantined": len(quarantined), "fit_seconds": round(fit_s, 2),
           **{f"budget_{k}": v for k, v in adapter.budget.items()},
           **{f"selected_{k}": v for k, v in adapter.selected.items()}}
    if output:
        _write_run(output, adapter, table, parts["test"], probs, result, row)
        if len(quarantined):
            write_csv(quarantined.assign(reason=quarantined["image"].map(bad))[["image", "reason"]],
                      os.path.join(output, "quarantine.csv"))
    return row


def _write_run(output, adapter, table, test, probs, result, row) -> None:
    from medclip.eval.zeroshot import json_safe

    os.makedirs(output, exist_ok=True)
    save_split(table, os.path.join(output, "split.csv"))
    config = {"method": adapter.name, "hparams": adapter.hparams, "seed": adapter.seed, "task": adapter.task.to_dict(),
              "model": adapter.model.config.name or "", "medclip_version": __version__, "row": row}
    with open(os.path.join(output, "config.json"), "w", encoding="utf-8") as f:
        json.dump(json_safe(config), f, indent=2, default=str)
    with open(os.path.join(output, "metrics.json"), "w", encoding="utf-8") as f:
        json.dump(json_safe({**result, "summary": row, "loss_history": adapter.history}), f, indent=2, default=str)
    preds = test[["image", "patient_id"]].copy()
    for c, name in enumerate(adapter.task.classes):
        preds[f"prob/{name}"] = probs[:, c]
    write_csv(preds, os.path.join(output, "predictions.csv"), keep=[c for c in preds.columns if c.startswith("prob/")])
    adapter.save(os.path.join(output, "adapter"))


def summarize(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and 95% CI (t-interval over seeds, clipped to [0, 1]) of AUROC, accuracy and ECE per method × shots."""
    from scipy import stats

    rows = []
    for (method, shots), group in results.groupby(["method", "shots"], sort=True):
        row = {"method": method, "shots": shots, "n_seeds": len(group)}
        for metric in ("auroc", "accuracy", "ece"):
            values = group[metric].astype(float).dropna().to_numpy()
            mean = float(values.mean()) if len(values) else float("nan")
            half = float(stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))) \
                if len(values) > 1 else float("nan")
            # all three metrics live in [0, 1]; a t-interval over few seeds can overshoot it
            row.update({metric: mean, f"{metric}_ci_low": max(0.0, mean - half),
                        f"{metric}_ci_high": min(1.0, mean + half)})
        rows.append(row)
    return pd.DataFrame(rows)


def plot_curve(summary: pd.DataFrame, path: str, metric: str = "auroc", results: pd.DataFrame | None = None) -> None:
    """Few-shot curve: ``metric`` vs shots per method; zero-shot as a dashed line; a title and N per point.

    With 3 or more seeds a 95% CI band (t-interval over seeds); with fewer, each seed's own point
    (from ``results``) instead, as a band from one or two values would mislead. The x axis is labelled
    with the shot counts themselves (1, 2, 4, 8, 16).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    shots = sorted(int(k) for k in summary.loc[summary["method"] != "zeroshot", "shots"].unique())
    for method, group in summary.groupby("method"):
        group = group.sort_values("shots")
        if method == "zeroshot":
            ax.axhline(group[metric].mean(), color="gray", linestyle="--", label="zero-shot (0 shots)")
            continue
        (line,) = ax.plot(group["shots"], group[metric], marker="o", label=f"{method} (mean)")
        few = group["n_seeds"] < 3
        if results is not None and few.any():
            seeds = results[(results["method"] == method) & results["shots"].isin(group.loc[few, "shots"])]
            ax.scatter(seeds["shots"], seeds[metric], s=14, color=line.get_color(), alpha=0.6, marker="x")
        ax.fill_between(group["shots"], group[f"{metric}_ci_low"].where(~few), group[f"{metric}_ci_high"].where(~few),
                        color=line.get_color(), alpha=0.15)
    ax.set_xscale("log", base=2)
    ax.set_xticks(shots, [str(k) for k in shots])
    ax.minorticks_off()
    n_seeds = sorted(set(summary.loc[summary["method"] != "zeroshot", "n_seeds"].astype(int)))
    name = metric.upper() if metric == "auroc" else metric
    spread = "band: 95% CI over seeds" if min(n_seeds, default=0) >= 3 else "x: each seed's value"
    ax.set_xlabel("shots per class")
    ax.set_ylabel(name)
    ax.set_title(f"Few-shot {name} by shots per class ({'/'.join(map(str, n_seeds))} seed(s); {spread})", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_grid(methods: list[str], model, task: Task, table: pd.DataFrame, shots_list: list[int],
             seeds: list[int], output: str, options: RunOptions | None = None) -> pd.DataFrame:
    """Every method × shots × seed (each on its own drawn split) plus zero-shot on the same test sets.

    Writes ``results.csv`` after every run (a cut session keeps what finished), ``summary.csv`` and
    ``fewshot_curve.png``; ``options.hparams`` maps a method name to its overrides (budget cuts).
    """
    from tqdm.auto import tqdm

    options = options or RunOptions(n_bootstrap=200, progress=True)
    options.cache = options.cache or FeatureCache(progress=options.progress)
    os.makedirs(output, exist_ok=True)
    methods = ["zeroshot", *[m for m in methods if m != "zeroshot"]]
    jobs = [(m, k, s) for k in shots_list for s in seeds for m in methods]
    rows = []
    for method, shots, seed in tqdm(jobs, desc="few-shot grid", disable=not options.progress):
        split_csv = os.path.join(output, "splits", f"shots{shots}-seed{seed}.csv")
        if not os.path.exists(split_csv):
            os.makedirs(os.path.dirname(split_csv), exist_ok=True)
            save_split(sample_split(table, task, shots, seed, options.val_shots), split_csv)
        run = dataclasses.replace(options, hparams=(options.hparams or {}).get(method), split_csv=split_csv,
                                  progress=False)
        row = run_fewshot(method, model, task, table, shots, seed, os.path.join(output, method,
                                                                                  f"shots{shots}-seed{seed}"), run)
        if method == "zeroshot":
            row["shots"], row["split_shots"] = 0, shots
        rows.append(row)
        write_csv(pd.DataFrame(rows), os.path.join(output, "results.csv"))
    results = pd.DataFrame(rows)
    summary = summarize(results)
    write_csv(summary, os.path.join(output, "summary.csv"))
    plot_curve(summary, os.path.join(output, "fewshot_curve.png"), results=results)
    return results
