"""Zero-shot classification: classes described by text prompts, no training.

* **single-label** (``task: single``): ``logits = logit_scale * image @ classes.T``; softmax over classes.
* **multi-label** (``task: multi``, as CheXzero): each condition has a positive and a negative prompt
  ensemble; its logit is ``logit_scale * image @ (pos - neg)``, and ``sigmoid(logit)`` equals the
  softmax over the (positive, negative) pair. Conditions are scored independently.
* models with a ``logit_bias`` (SigLIP, trained with a per-pair sigmoid): a multi-label condition's logit is
  ``logit_scale * image @ pos + logit_bias`` (its own sigmoid, as trained; negative prompts unused);
  single-label tasks keep the softmax over classes of the same logits (the bias cancels).

:func:`run_zeroshot` goes from a model, a manifest (or class-per-folder tree) and a class file to a
per-image probability table plus metrics with bootstrap CIs, calibration (optionally temperature
scaling fitted on a validation split) and figures. See :mod:`medclip.eval.prompts` for class files.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from ..defaults import EVAL_BATCH_SIZE, N_BOOTSTRAP, N_BOOTSTRAP_FIGURE
from ..errors import DataError
from ..version import __version__
from .calibration import expected_calibration_error, fit_temperature, pooled_bins, probabilities
from .inputs import encode_images, read_labelled_images
from .metrics import evaluate
from .prompts import ClassFile, encode_prompt_sets, load_class_file
from .task import Task


class ZeroShotClassifier:
    """Text-defined classifier over image embeddings.

    Args:
        model: a :class:`medclip.CLIP`.
        classes: a :class:`ClassFile`, a path to one, or a :class:`~medclip.eval.task.Task`.
        tokenizer: defaults to the model's tokenizer.
        cache_dir: prompt-embedding cache folder (None: no cache).
        fingerprint: precomputed text-tower hash for the cache key.
        targets: precomputed target embeddings ``(T, D)`` (a saved classifier); skips encoding.
    """

    def __init__(self, model, classes: ClassFile | Task | str, tokenizer=None, cache_dir: str | None = None,
                 fingerprint: str | None = None, targets: torch.Tensor | None = None):
        if isinstance(classes, (str, os.PathLike)):
            classes = load_class_file(classes)
        self.classes = None if isinstance(classes, Task) else classes
        self.task = classes if isinstance(classes, Task) else Task.from_class_file(classes)
        if targets is None:
            if tokenizer is None:
                from ..tokenizer import get_tokenizer

                tokenizer = get_tokenizer(model.config)
            with torch.no_grad():
                targets = encode_prompt_sets(model, tokenizer, self.task.prompts, cache_dir, fingerprint)
        self.targets = targets.float().cpu()
        self.logit_scale = float(model.get_logit_scale().detach())
        bias = getattr(model, "logit_bias", None)
        self.logit_bias = float(bias.detach()) if bias is not None else None

    @property
    def names(self) -> list[str]:
        return self.task.classes

    def logits(self, image_features: torch.Tensor) -> torch.Tensor:
        """``(N, K)`` logits: class scores (single), positive-minus-negative scores (multi), or for models
        with a logit bias (SigLIP) ``scale · sim(pos) + bias`` per condition (multi)."""
        target_logits = self.logit_scale * image_features.float() @ self.targets.T
        if self.logit_bias is not None and self.task.label_kind.name == "multi":
            return target_logits[:, :len(self.task.classes)] + self.logit_bias
        return self.task.combine(target_logits)

    def predict_proba(self, image_features: torch.Tensor, temperature: float = 1.0) -> np.ndarray:
        """Probabilities ``(N, K)``: softmax over classes (single) or per-condition sigmoid (multi)."""
        return probabilities(self.logits(image_features).numpy(), self.task.kind, temperature)


@dataclass
class ZeroShotResult:
    """What :func:`run_zeroshot` returns.

    Attributes:
        table: one row per image: ``image``, ``patient_id``, ``split``, labels, ``prob/<class>``, ``logit/<class>``.
        metrics: the metrics JSON content (also written to ``metrics.json``).
        classes: the class file used.
        quarantine: images that could not be read, with reasons.
        figures: name -> path of the PNG figures written.
    """

    table: pd.DataFrame
    metrics: dict
    classes: ClassFile
    quarantine: pd.DataFrame
    figures: dict = field(default_factory=dict)

    def eval_mask(self) -> np.ndarray:
        """Rows the metrics were computed on (labelled, and not in the calibration split)."""
        return self.table["evaluated"].to_numpy(dtype=bool)

    @property
    def task(self) -> Task:
        return Task.from_class_file(self.classes)

    def labels(self) -> np.ndarray:
        return self.task.labels(self.table)

    def probs(self) -> np.ndarray:
        return self.table[[f"prob/{n}" for n in self.classes.names]].to_numpy(dtype=float)


def _calibration_split(table: pd.DataFrame, calibrate_on: str | None, val_fraction: float, seed: int) -> pd.Series:
    """``split`` column: the manifest's, or a leak-free patient-level one when calibrating without it."""
    if not calibrate_on or (table["split"] == calibrate_on).any():
        return table["split"]
    from ..data.splits import split_leak_free

    split = split_leak_free(table[["image", "patient_id"]], val=val_fraction, test=0.0, seed=seed)["split"]
    return split.replace({"val": calibrate_on, "train": "test"})


def _cluster_ids(table: pd.DataFrame) -> np.ndarray:
    from ..data.splits import leak_groups

    return leak_groups(table[["image", "patient_id"]].astype(str))


def score_table(clf: ZeroShotClassifier, table: pd.DataFrame, logits: np.ndarray, calibrate_on: str | None = None,
                val_fraction: float = 0.2, seed: int = 0) -> tuple[pd.DataFrame, float]:
    """Add ``logit/*``, ``prob/*`` and ``evaluated`` columns; fit a temperature on the calibration split."""
    table = table.copy()
    table["split"] = _calibration_split(table, calibrate_on, val_fraction, seed).to_numpy()
    y = clf.task.labels(table)
    labelled = clf.task.labelled(y)
    calib = (table["split"] == calibrate_on).to_numpy() & labelled if calibrate_on else np.zeros(len(table), bool)
    temperature = 1.0
    if calibrate_on:
        if calib.sum() < 2:
            raise DataError(f"--calibrate-on {calibrate_on}: only {int(calib.sum())} labelled images in that split; "
                            "need at least 2 (or leave calibration off)")
        temperature = fit_temperature(logits[calib], y[calib], clf.task.kind)
    probs = probabilities(logits, clf.task.kind, temperature)
    for c, name in enumerate(clf.names):
        table[f"logit/{name}"] = logits[:, c]
        table[f"prob/{name}"] = probs[:, c]
    table["evaluated"] = labelled & ~calib
    return table, temperature


def compute_metrics(table: pd.DataFrame, clf: ZeroShotClassifier, temperature: float, n_bootstrap: int = N_BOOTSTRAP,
                    seed: int = 0, threshold: float = 0.5, bootstrap_unit: str = "patient", n_bins: int = 15) -> dict:
    """Metrics JSON content for the ``evaluated`` rows of a scored table (see :func:`score_table`)."""
    rows = table[table["evaluated"]]
    out: dict = {"task": clf.task.kind, "classes": clf.names, "n_images": int(len(table)),
                 "n_evaluated": int(len(rows)), "temperature": temperature, "logit_scale": clf.logit_scale}
    if rows.empty:
        out["note"] = "no labelled images to evaluate: probabilities only"
        return out
    y = clf.task.labels(rows)
    probs = rows[[f"prob/{n}" for n in clf.names]].to_numpy(dtype=float)
    kind = clf.task.kind
    raw = probabilities(rows[[f"logit/{n}" for n in clf.names]].to_numpy(dtype=float), kind)
    groups = _cluster_ids(rows) if bootstrap_unit == "patient" else None
    out.update(evaluate(y, probs, clf.names, kind, threshold, groups, n_bootstrap, seed))
    out["n_images"] = int(len(table))  # evaluate() counts only the evaluated rows
    out["calibration"] = {"n_bins": n_bins, "ece": expected_calibration_error(probs, y, kind, n_bins),
                          "ece_before_scaling": expected_calibration_error(raw, y, kind, n_bins)}
    return out


def write_figures(result: ZeroShotResult, output: str, n_bootstrap: int = N_BOOTSTRAP_FIGURE) -> dict[str, str]:
    """ROC curves with CI bands (seeded like the metrics' bootstrap), reliability diagram and (single-label)
    confusion matrix as PNGs."""
    from . import plots

    mask, task, m = result.eval_mask(), result.task, result.metrics
    if not mask.any():
        return {}
    y, probs = result.labels()[mask], result.probs()[mask]
    rows = result.table[mask]
    figures = {name: os.path.join(output, f"{name}.png") for name in ("roc", "reliability", "confusion")}
    plots.plot_roc(y, probs, task.classes, task.kind, m, _cluster_ids(rows), n_bootstrap, figures["roc"])
    raw = probabilities(rows[[f"logit/{n}" for n in task.classes]].to_numpy(dtype=float), task.kind)
    curves = {f"zero-shot (ECE {m['calibration']['ece_before_scaling']:.3f})": raw}
    if m["temperature"] != 1.0:
        curves[f"temperature {m['temperature']:.2f} (ECE {m['calibration']['ece']:.3f})"] = probs
    plots.plot_reliability({k: pooled_bins(v, y, task.kind, m["calibration"]["n_bins"]) for k, v in curves.items()},
                           figures["reliability"])
    if task.label_kind.exclusive:  # a confusion matrix needs one predicted class per image
        pred = task.label_kind.decisions(probs, m["bootstrap"]["threshold"]).argmax(1)
        plots.plot_confusion(y, pred, task.classes, figures["confusion"])
    else:
        del figures["confusion"]
    import matplotlib.pyplot as plt

    plt.close("all")
    return figures


def _select_split(table: pd.DataFrame, source, split: str | None, calibrate_on: str | None) -> pd.DataFrame:
    """Rows of ``split`` (and of ``calibrate_on``, kept for calibration); all rows when ``split`` is None."""
    if not split:
        return table
    if not (table["split"] == split).any():
        raise DataError(f"{source}: no rows with split '{split}' (splits present: "
                        f"{sorted(set(table['split']) - {''}) or 'none'}); drop --split or fix the manifest")
    keep = table["split"].isin([split, calibrate_on] if calibrate_on else [split])
    return table[keep].reset_index(drop=True)


@dataclass
class ZeroShotOptions:
    """How :func:`run_zeroshot` reads, scores and reports.

    Attributes:
        calibrate_on: split name (``val``) to fit temperature scaling on; metrics use the other rows.
            Without a ``split`` column a leak-free patient-level split of ``val_fraction`` is made.
        val_fraction: fraction of patients for the calibration split when one must be made.
        n_bootstrap: bootstrap resamples for the CIs.
        seed: seed of the bootstrap and of a generated calibration split.
        threshold: decision threshold for F1/accuracy (binary and multi-label).
        bootstrap_unit: ``patient`` (cluster bootstrap over patients/images) or ``image``.
        batch_size: images per forward pass.
        num_workers: DataLoader workers for image decoding.
        cache_dir: prompt-embedding cache (None: no cache).
        fingerprint: precomputed text-tower hash for the cache key.
        figures: write the PNG figures (needs ``output``).
        progress: show progress bars.
        max_images: evaluate a seeded random subset of this many images (stratified by class for
            single-label tasks) — a quick look before a full run.
        split: evaluate only rows of this split (e.g. ``test``; rows of ``calibrate_on`` are kept for
            calibration).
        run_info: extra entries stored in ``metrics.json`` (model folder, command line ...).
    """

    calibrate_on: str | None = None
    val_fraction: float = 0.2
    n_bootstrap: int = N_BOOTSTRAP
    seed: int = 0
    threshold: float = 0.5
    bootstrap_unit: str = "patient"
    batch_size: int = EVAL_BATCH_SIZE
    num_workers: int = 0
    cache_dir: str | None = None
    fingerprint: str | None = None
    figures: bool = True
    progress: bool = True
    max_images: int | None = None
    split: str | None = None
    run_info: dict | None = None


def run_zeroshot(model, source: str, classes: ClassFile | str, output: str | None = None,
                 options: ZeroShotOptions | None = None, **overrides) -> ZeroShotResult:
    """Zero-shot classify every image of ``source`` and evaluate against its labels.

    Args:
        model: a :class:`medclip.CLIP` (put in eval mode here).
        source: a manifest CSV, a class-per-folder image tree or a manifest DataFrame.
        classes: class file (path or :class:`ClassFile`).
        output: folder for ``probabilities.csv``, ``metrics.json``, ``quarantine.csv`` and figures.
        options: see :class:`ZeroShotOptions`.
        **overrides: fields of :class:`ZeroShotOptions` (``n_bootstrap=200``) replacing those of ``options``.
    """
    o = dataclasses.replace(options or ZeroShotOptions(), **overrides)
    model.eval()
    clf = ZeroShotClassifier(model, classes, cache_dir=o.cache_dir, fingerprint=o.fingerprint)
    table = _select_split(read_labelled_images(source, clf.classes), source, o.split, o.calibrate_on)
    if o.max_images and len(table) > o.max_images:
        table = subsample(table, o.max_images, "label" if clf.task.label_kind.exclusive else None, o.seed)
    features, kept, bad = encode_images(model, table["image"].tolist(), batch_size=o.batch_size,
                                        num_workers=o.num_workers, progress=o.progress)
    quarantine = pd.DataFrame([(table["image"].iat[i], reason) for i, reason in bad], columns=["image", "reason"])
    table = table.iloc[kept].reset_index(drop=True)
    logits = clf.logits(features).numpy()
    table, temperature = score_table(clf, table, logits, o.calibrate_on, o.val_fraction, o.seed)
    metrics = compute_metrics(table, clf, temperature, o.n_bootstrap, o.seed, o.threshold, o.bootstrap_unit)
    metrics["n_quarantined"] = int(len(quarantine))
    metrics.update({"calibrate_on": o.calibrate_on, "split": o.split, "max_images": o.max_images,
                    "source": str(source) if isinstance(source, (str, os.PathLike)) else "DataFrame",
                    **(o.run_info or {})})
    metrics["prompts"] = clf.task.prompt_report()
    result = ZeroShotResult(table, metrics, clf.classes, quarantine)
    if output:
        _write_outputs(result, output, o.figures)
    return result


def subsample(table: pd.DataFrame, n: int, stratify: str | None = None, seed: int = 0) -> pd.DataFrame:
    """A seeded random subset of ``n`` rows, keeping the class proportions of ``stratify`` when given."""
    if stratify is None:
        return table.sample(n=n, random_state=seed).sort_index().reset_index(drop=True)
    share = n / len(table)
    parts = [g.sample(n=max(1, round(len(g) * share)), random_state=seed) for _, g in table.groupby(stratify)]
    return pd.concat(parts).sort_index().reset_index(drop=True)


def confident_examples(result: ZeroShotResult, class_name: str, k: int = 4) -> pd.DataFrame:
    """The model's most confident correct and most confident incorrect calls of ``class_name``.

    A call of the class is the predicted class (single-label; for two classes ``p >= threshold``) or
    ``p >= threshold`` (multi-label), at the run's threshold; calls are ranked by the probability of the
    class. Incorrect confident calls are where shortcuts show.

    Returns:
        Up to ``k`` rows per group (``group``: ``confident correct`` / ``confident incorrect``) with
        ``image``, ``patient_id``, ``prob/<class>`` and ``truth`` (yes/no).
    """
    task = result.task
    if class_name not in task.classes:
        raise DataError(f"unknown class '{class_name}' (classes: {', '.join(task.classes)})")
    c = task.classes.index(class_name)
    rows = result.table[result.eval_mask()]
    threshold = result.metrics.get("bootstrap", {}).get("threshold", 0.5)
    called = task.label_kind.decisions(rows[[f"prob/{n}" for n in task.classes]].to_numpy(float), threshold)[:, c] == 1
    truth = task.indicator(task.labels(rows))[:, c]
    calls = rows.assign(truth=np.where(truth == 1, "yes", "no"))[called & ~np.isnan(truth)]
    calls = calls.sort_values(f"prob/{class_name}", ascending=False)
    out = pd.concat([calls[calls["truth"] == "yes"].head(k).assign(group="confident correct"),
                     calls[calls["truth"] == "no"].head(k).assign(group="confident incorrect")])
    return out[["group", "image", "patient_id", f"prob/{class_name}", "truth"]].reset_index(drop=True)


def accuracy_table(result: ZeroShotResult) -> pd.DataFrame:
    """Accuracy beside what it must be read against: each class's prevalence and the accuracy of always
    answering the most common label (a model below that bar has learned nothing usable at this threshold)."""
    task, metrics = result.task, result.metrics["metrics"]
    targets = task.indicator(result.labels()[result.eval_mask()])
    rows = []
    for c, name in enumerate(task.classes):
        acc = metrics.get(f"accuracy/{name}", {})
        rows.append({"class": name, "prevalence": float(np.nanmean(targets[:, c])), "accuracy": acc.get("value"),
                     "ci_low": acc.get("ci_low"), "ci_high": acc.get("ci_high"),
                     "always-majority accuracy": task.label_kind.majority_accuracy(targets[:, [c]])
                     if f"accuracy/{name}" in metrics else None})
    acc = metrics["accuracy"]
    rows.append({"class": "all", "prevalence": None, "accuracy": acc["value"], "ci_low": acc["ci_low"],
                 "ci_high": acc["ci_high"], "always-majority accuracy": task.label_kind.majority_accuracy(targets)})
    return pd.DataFrame(rows).set_index("class")


def _write_outputs(result: ZeroShotResult, output: str, figures: bool) -> None:
    os.makedirs(output, exist_ok=True)
    result.metrics["medclip_version"] = __version__
    text_columns = [c for c in ("report", "report_path", "text") if c in result.table.columns]
    from ..data.csvsafe import write_csv

    table = result.table.drop(columns=text_columns)
    write_csv(table, os.path.join(output, "probabilities.csv"),
              keep=[c for c in table.columns if c.startswith(("label", "prob/", "truth"))])
    if len(result.quarantine):
        write_csv(result.quarantine, os.path.join(output, "quarantine.csv"))
    if figures:
        n_band = min(200, result.metrics.get("bootstrap", {}).get("n_resamples", 200))
        result.figures = write_figures(result, output, n_bootstrap=n_band)
        result.metrics["figures"] = {k: os.path.basename(v) for k, v in result.figures.items()}
    with open(os.path.join(output, "metrics.json"), "w", encoding="utf-8") as f:
        json.dump(json_safe(result.metrics), f, indent=2)


def json_safe(value):
    """Recursively turn numpy scalars into Python numbers and NaN/inf into ``None`` (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
