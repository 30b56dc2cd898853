"""The demo corpus's held-out finding, scored zero-shot: AUROC (95% CI) of "opacity in the left upper zone".

The demo corpus (:mod:`medclip.data.demo`) never shows that combination in a training report.
:func:`heldout_demo_report` scores the val/test images with a prompt made only of training-report
words; ``medclip pretrain`` calls :func:`pretrain_report` at the end of a run whose recipe says
``data.demo: true``.
"""

from __future__ import annotations

import json
import logging
import os
import re

import pandas as pd

from ..defaults import EVAL_BATCH_SIZE, N_BOOTSTRAP
from ..errors import DataError
from .inputs import manifest_frame
from .metrics import evaluate
from .zeroshot import _cluster_ids, json_safe, run_zeroshot

logger = logging.getLogger(__name__)


HELDOUT_PROMPTS = ["Opacity in the left upper zone.", "Left upper zone opacity."]
HELDOUT_NEGATIVES = ["Opacity in the right upper zone.", "Opacity in the left lower zone.",
                     "Opacity in the right lower zone.", "No focal opacity."]


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def _demo_frame(manifest: str, label_column: str, prompt_texts: list[str]) -> pd.DataFrame:
    """The demo manifest with absolute image paths; raises if a prompt word never occurs in a training report."""
    df = manifest_frame(manifest)
    root = os.path.dirname(os.path.abspath(manifest))
    df["image"] = [os.path.join(root, p) for p in df["image"]] if "image" in df.columns else df.get("image")
    for col in ("split", "report", label_column):
        if col not in df.columns:
            raise DataError(f"{manifest}: no '{col}' column; this is not a demo-corpus manifest "
                            "(medclip.data.demo.make_demo_corpus)")
    vocabulary = set().union(*map(_words, df.loc[df["split"] == "train", "report"]))
    unseen = sorted(set().union(*map(_words, prompt_texts)) - vocabulary)
    if unseen:
        raise DataError(f"held-out prompt words never seen in training reports: {', '.join(unseen)}")
    return df


def heldout_demo_report(model, manifest: str, output: str | None = None, prompts: list[str] | None = None,
                        negatives: list[str] | None = None, label_column: str = "opacity_left_upper",
                        splits: tuple[str, ...] = ("val", "test"), n_bootstrap: int = N_BOOTSTRAP, seed: int = 0,
                        batch_size: int = EVAL_BATCH_SIZE, progress: bool = False) -> dict:
    """Zero-shot AUROC (95% CI) on the demo corpus's held-out finding combination.

    The demo corpus (:mod:`medclip.data.demo`) never shows "opacity in the left upper zone" in a
    training report. This scores the val/test images with a prompt made only of words that occur
    in training reports (checked: unseen words are reported and raise), contrasted with the other
    zones or no opacity, and reports the AUROC of finding the held-out combination among all
    val/test images, and among the images that have an opacity somewhere (localisation only).

    Args:
        model: a trained :class:`medclip.CLIP`.
        manifest: the demo manifest CSV (``split``, ``report``, ``opacity``, ``opacity_left_upper`` ...).
        output: optional folder for the usual zero-shot outputs (probabilities, metrics, ROC plot).
        prompts: positive prompts (default :data:`HELDOUT_PROMPTS`).
        negatives: negative prompts (default :data:`HELDOUT_NEGATIVES`).
        label_column: the 0/1 column of the held-out combination.
        splits: which splits are evaluated (never ``train``).
        n_bootstrap: bootstrap resamples (patient-level) for the CIs.
        seed: bootstrap seed.
        batch_size: images per forward pass.
        progress: show progress bars.

    Returns:
        dict with ``auroc`` and ``auroc_among_opacities`` (each ``value``, ``ci_low``, ``ci_high``),
        ``n_images``, ``n_positive``, ``prompts``, ``negatives``, ``temperature``-free probabilities.
    """
    from .prompts import parse_class_file

    prompts, negatives = prompts or HELDOUT_PROMPTS, negatives or HELDOUT_NEGATIVES
    df = _demo_frame(manifest, label_column, prompts + negatives)
    cf = parse_class_file({"task": "multi", "classes": {"heldout": {
        "prompts": prompts, "negatives": negatives, "column": label_column}}}, "held-out demo task")
    rows = df[df["split"].isin(splits)]
    result = run_zeroshot(model, rows, cf, output, n_bootstrap=n_bootstrap, seed=seed, batch_size=batch_size,
                          progress=progress)
    m = result.metrics["metrics"]["auroc/heldout"]
    report = {"auroc": {k: m[k] for k in ("value", "ci_low", "ci_high")}, "n_images": result.metrics["n_evaluated"],
              "n_positive": result.metrics["n_positive"]["heldout"], "prompts": prompts, "negatives": negatives,
              "splits": list(splits), "n_bootstrap": n_bootstrap}
    opacities = result.table["opacity"].astype(float).to_numpy() == 1 if "opacity" in result.table else None
    if opacities is not None and opacities.any():
        sub = result.table[opacities]
        local = evaluate(sub["label/heldout"].to_numpy(float)[:, None], sub[["prob/heldout"]].to_numpy(float),
                         ["heldout"], "multi", groups=_cluster_ids(sub), n_bootstrap=n_bootstrap, seed=seed)
        a = local["metrics"]["auroc/heldout"]
        report["auroc_among_opacities"] = {k: a[k] for k in ("value", "ci_low", "ci_high")}
    if output:
        with open(os.path.join(output, "heldout.json"), "w", encoding="utf-8") as f:
            json.dump(json_safe(report), f, indent=2)
    return report


def format_heldout(report: dict) -> str:
    """One line for logs: held-out AUROC with CI (and among opacities)."""
    a = report["auroc"]
    line = (f"zero-shot on the held-out finding ({report['prompts'][0]!r}; {report['n_positive']} of "
            f"{report['n_images']} val/test images): AUROC {a['value']:.3f} "
            f"(95% CI {a['ci_low']:.3f}-{a['ci_high']:.3f})")
    if "auroc_among_opacities" in report:
        b = report["auroc_among_opacities"]
        line += f"; among images with an opacity {b['value']:.3f} ({b['ci_low']:.3f}-{b['ci_high']:.3f})"
    return line


def pretrain_report(model_dir: str, recipe) -> str | None:
    """Called by ``medclip pretrain`` at the end of a run: held-out zero-shot AUROC on the demo corpus.

    Returns None (prints nothing) unless the recipe says ``data.demo: true``; a demo recipe pointing at
    a manifest that is not the demo corpus logs a warning and returns None. Writes
    ``<run>/zeroshot_heldout/`` (probabilities, metrics, ROC plot, ``heldout.json``).
    """
    if not recipe.data.demo:
        return None
    from ..model import CLIP

    model = CLIP.from_pretrained(model_dir)
    output = os.path.join(os.path.dirname(os.path.abspath(model_dir)), "zeroshot_heldout")
    try:
        return format_heldout(heldout_demo_report(model, recipe.data.manifest, output))
    except DataError as exc:
        logger.warning("held-out demo report skipped: %s", exc)
        return None
