"""What the quick start's main job shows: the demo model doing CLIP's job on test-split patients.

:func:`demo_report` evaluates a model trained on the demo corpus (:mod:`medclip.data.demo`) on the
images of the **test** split (never the validation patients that pick ``best/``), prompted only with
text (:data:`DEMO_CLASSES`, the same prompts as ``recipes/classes/demo-findings.yaml``):

* zero-shot AUROC (95% patient-level bootstrap CI, p against 0.5) of each finding, over the test images
  that show no unseen combination (the findings as training showed them; the same over all test images
  is reported beside it, without a verdict);
* the same, over all test images, for the two combinations no training image and no training report
  contains, "an enlarged heart with a left effusion" and "opacity in the left upper zone" (their prompts
  use only words of training reports: checked, unseen words raise);
* 16-shot linear probes on the trained image tower against the same architecture randomly
  initialised (:func:`medclip.eval.probe.probe_vs_random`, 5 seeds, paired t-test on the macro AUROC).

``medclip pretrain`` calls :func:`pretrain_report` at the end of a run whose recipe says
``data.demo: true`` and prints :func:`format_demo_report` with verdicts Holm-corrected together with
the run's retrieval verdicts (:mod:`medclip.eval.significance`).
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass

import pandas as pd

from ..defaults import N_BOOTSTRAP
from ..errors import DataError
from .inputs import manifest_frame
from .significance import auroc_test, format_p
from .zeroshot import json_safe, run_zeroshot

logger = logging.getLogger(__name__)

HELDOUT_CLASS = "enlarged heart with a left effusion"  # the required unseen combination
HELDOUT_ZONE_CLASS = "opacity in the left upper zone"  # the harder one: an unseen place
HELDOUT_COLUMNS = {HELDOUT_CLASS: "cardiomegaly_effusion_left", HELDOUT_ZONE_CLASS: "opacity_left_upper"}
FINDINGS = ("opacity", "cardiomegaly", "effusion")
DEMO_CLASSES = {
    "description": "Demo corpus findings, one yes/no question each (positive vs negative prompts).",
    "task": "multi", "templates": ["{}"],
    "classes": {
        # any zone; each sentence once with an enlarged and once with a normal heart, so that the pair's
        # difference is about the opacity, not heart size (chosen on the validation split; README)
        "opacity": {"prompts": ["Opacity in the right upper zone. The heart is enlarged.",
                                "Opacity in the right upper zone. Normal heart size.",
                                "Opacity in the right lower zone. The heart is enlarged.",
                                "Opacity in the right lower zone. Normal heart size.",
                                "Opacity in the left lower zone. The heart is enlarged.",
                                "Opacity in the left lower zone. Normal heart size.",
                                "Opacity in the left upper zone. The heart is enlarged.",
                                "Opacity in the left upper zone. Normal heart size."],
                    "negatives": ["No focal opacity. The heart is enlarged.", "No focal opacity. Normal heart size.",
                                  "The lungs are clear. The heart is enlarged.",
                                  "The lungs are clear. Normal heart size."]},
        "cardiomegaly": {"prompts": ["The heart is enlarged.", "Cardiomegaly."],
                         "negatives": ["Normal heart size.", "Heart size is normal."]},
        "effusion": {"prompts": ["Right pleural effusion.", "Left pleural effusion."],
                     "negatives": ["No pleural effusion."]},
        # never together in a training image or report; contrasted with every other heart/effusion state
        HELDOUT_CLASS: {"prompts": ["The heart is enlarged. Left pleural effusion.",
                                    "Cardiomegaly. Left pleural effusion."],
                        "negatives": ["Normal heart size. No pleural effusion.",
                                      "The heart is enlarged. No pleural effusion.",
                                      "Normal heart size. Left pleural effusion.",
                                      "The heart is enlarged. Right pleural effusion.",
                                      "Normal heart size. Right pleural effusion."],
                        "column": HELDOUT_COLUMNS[HELDOUT_CLASS]},
        # never in a training image or report; contrasted with the other zones or no opacity
        HELDOUT_ZONE_CLASS: {"prompts": ["Opacity in the left upper zone.", "Left upper zone opacity."],
                             "negatives": ["Opacity in the right upper zone.", "Opacity in the left lower zone.",
                                           "Opacity in the right lower zone.", "No focal opacity."],
                             "column": HELDOUT_COLUMNS[HELDOUT_ZONE_CLASS]},
    }}


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def _demo_frame(manifest: str, classes: dict) -> pd.DataFrame:
    """The demo manifest with absolute image paths, checked: the held-out combinations are absent from training
    rows and every word of their prompts occurs in a training report (else a one-line error)."""
    df = manifest_frame(manifest)
    root = os.path.dirname(os.path.abspath(manifest))
    for col in ("image", "split", "report", "patient_id", "heldout", *HELDOUT_COLUMNS.values(), *FINDINGS):
        if col not in df.columns:
            raise DataError(f"{manifest}: no '{col}' column; this is not a demo-corpus manifest "
                            "(medclip.data.demo.make_demo_corpus; delete its folder to regenerate it)")
    df["image"] = [os.path.join(root, p) for p in df["image"]]
    train = df["split"] == "train"
    vocabulary = set().union(*map(_words, df.loc[train, "report"]))
    for name, column in HELDOUT_COLUMNS.items():
        if (df.loc[train, column].astype(int) == 1).any():
            raise DataError(f"{manifest}: training rows show the held-out '{name}'; regenerate the demo corpus")
        unseen = sorted(set().union(*map(_words, classes["classes"][name]["prompts"])) - vocabulary)
        if unseen:
            raise DataError(f"held-out prompt words never seen in training reports: {', '.join(unseen)}")
    return df


@dataclass
class DemoReportOptions:
    """Options of :func:`demo_report`.

    Attributes:
        split: the evaluated split (``test``; shots of the probe come from ``train``).
        classes: class-file dict (default :data:`DEMO_CLASSES`).
        n_bootstrap: bootstrap resamples (patient-level) of the CIs.
        seed: bootstrap seed.
        probe_seeds: seeds of the few-shot probe (empty: no probe).
        shots: positive and negative examples per finding of the probe.
    """

    split: str = "test"
    classes: dict | None = None
    n_bootstrap: int = N_BOOTSTRAP
    seed: int = 0
    probe_seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    shots: int = 16


def demo_report(model, manifest: str, output: str | None = None, options: DemoReportOptions | None = None) -> dict:
    """Zero-shot AUROCs (findings and the held-out combination) and probe-vs-random on the demo corpus.

    Args:
        model: a :class:`medclip.CLIP` trained on the demo corpus.
        manifest: the demo manifest CSV.
        output: folder for the zero-shot outputs (probabilities, metrics, ROC plot) and ``demo_report.json``.
        options: split, classes, bootstrap and probe settings (:class:`DemoReportOptions`; default: its defaults).

    Returns:
        dict: ``zeroshot`` (class -> ``value``, ``ci_low``, ``ci_high``, ``p``, ``n_positive``,
        ``n_negative``; a finding over the ``n_images_findings`` images without an unseen combination, a
        held-out combination over all), ``findings_all_images`` (each finding over all images; no verdict),
        ``heldout_among_opacities`` (AUROC and CI among images with an opacity),
        ``probe`` (see :func:`~medclip.eval.probe.probe_vs_random`), ``n_images``, ``split``.
    """
    from .probe import probe_vs_random
    from .prompts import parse_class_file

    opts = options or DemoReportOptions()
    split, n_bootstrap, seed = opts.split, opts.n_bootstrap, opts.seed
    classes = opts.classes or DEMO_CLASSES
    df = _demo_frame(manifest, classes)
    rows = df[df["split"] == split].reset_index(drop=True)
    if rows.empty:
        raise DataError(f"{manifest}: no '{split}' rows to evaluate")
    result = run_zeroshot(model, rows, parse_class_file(classes, "demo classes"), output, n_bootstrap=n_bootstrap,
                          seed=seed, progress=False, figures=output is not None)
    table = result.table

    def score(frame: pd.DataFrame, name: str) -> dict:
        return auroc_test(frame[f"label/{name}"], frame[f"prob/{name}"], frame["patient_id"], n_bootstrap, seed)

    # A finding is scored on the images without an unseen combination: those (an opacity in the unseen zone,
    # an enlarged heart with a left effusion) are what the held-out rows measure, over all images.
    seen = table[table["heldout"].astype(int) == 0]
    report = {"split": split, "n_images": int(len(table)), "n_patients": int(table["patient_id"].nunique()),
              "n_images_findings": int(len(seen)), "prompts": result.metrics["prompts"], "zeroshot": {},
              "findings_all_images": {}}
    for name in classes["classes"]:
        held_out = name in HELDOUT_COLUMNS
        report["zeroshot"][name] = score(table if held_out else seen, name)
        if not held_out:  # not a verdict: the same finding with the unseen combinations included
            report["findings_all_images"][name] = score(table, name)
    opacities = table["opacity"].astype(int) == 1
    if opacities.any():
        report["heldout_among_opacities"] = score(table[opacities], HELDOUT_ZONE_CLASS)
    if opts.probe_seeds:
        train = df[df["split"] == "train"].reset_index(drop=True)
        try:
            report["probe"] = probe_vs_random(model, train, rows, list(FINDINGS), opts.shots, opts.probe_seeds)
        except DataError as exc:  # a corpus too small for the shots: say so, keep the zero-shot results
            report["probe_skipped"] = str(exc)
    if output:
        with open(os.path.join(output, "demo_report.json"), "w", encoding="utf-8") as f:
            json.dump(json_safe(report), f, indent=2)
    return report


def report_pvalues(report: dict) -> dict[str, float]:
    """The p-values behind the report's verdicts, for Holm correction with the command's others."""
    out = {f"zeroshot/{name}": r["p"] for name, r in report["zeroshot"].items()}
    if "probe" in report:
        out["probe"] = report["probe"]["p"]
    return out


def format_demo_report(report: dict, verdicts: dict[str, dict]) -> str:
    """The main job's result lines, each number with its CI and verdict (``verdicts`` from
    :func:`medclip.eval.significance.verdicts` over :func:`report_pvalues` and the command's others)."""
    lines = [f"zero-shot on the {report['n_images']} {report['split']}-split images ({report['n_patients']} patients; "
             "prompted with text only, positive vs negative sentence); each finding over the "
             f"{report['n_images_findings']} images without an unseen combination, each unseen combination over all:"]
    for name, r in report["zeroshot"].items():
        extra = "  [never in a training image or report]" if name in HELDOUT_COLUMNS else ""
        lines.append(f"  {name:<35} AUROC {r['value']:.3f} (95% CI {r['ci_low']:.3f}-{r['ci_high']:.3f}; "
                     f"{r['n_positive']} positive) {verdicts[f'zeroshot/{name}']['text']}{extra}")
    if report.get("findings_all_images"):
        every = ", ".join(f"{name} {r['value']:.3f}" for name, r in report["findings_all_images"].items())
        lines.append(f"  the findings over all {report['n_images']} images, unseen combinations included: {every}")
    if "heldout_among_opacities" in report:
        r = report["heldout_among_opacities"]
        lines.append(f"  {HELDOUT_ZONE_CLASS}, among images with an opacity: AUROC {r['value']:.3f} "
                     f"(95% CI {r['ci_low']:.3f}-{r['ci_high']:.3f})")
    if "probe" in report:
        lines.extend(_probe_lines(report["probe"], verdicts["probe"]))
    elif "probe_skipped" in report:
        lines.append(f"few-shot probe skipped: {report['probe_skipped']}")
    return "\n".join(lines)


def _probe_lines(probe: dict, verdict: dict) -> list[str]:
    import numpy as np

    seeds = len(probe["seeds"])
    lines = [f"{probe['shots']}-shot linear probe on the image tower, trained vs the same architecture randomly "
             f"initialised ({seeds} seeds, mean test AUROC):"]
    for name in probe["trained"]:
        t, r = np.mean(probe["trained"][name]), np.mean(probe["random"][name])
        lines.append(f"  {name:<13} trained {t:.3f}  random {r:.3f}  ({'higher' if t > r else 'NOT higher'})")
    better = "trained better" if verdict["p_holm"] < 0.05 else "trained NOT better"
    lines.append(f"  macro         trained {np.mean(probe['macro_trained']):.3f}  random "
                 f"{np.mean(probe['macro_random']):.3f}  paired t-test p={format_p(probe['p'])} "
                 f"({better}, Holm p={format_p(verdict['p_holm'])})")
    return lines


def pretrain_report(model_dir: str, recipe) -> dict | None:
    """Called by ``medclip pretrain`` at the end of a run: :func:`demo_report` of ``<run>/model``.

    Returns None unless the recipe says ``data.demo: true``; a demo recipe pointing at a manifest that
    is not the demo corpus logs a warning and returns None. Writes ``<run>/demo_eval/``.
    """
    if not recipe.data.demo:
        return None
    from ..model import CLIP

    model = CLIP.from_pretrained(model_dir)
    output = os.path.join(os.path.dirname(os.path.abspath(model_dir)), "demo_eval")
    try:
        return demo_report(model, recipe.data.manifest, output)
    except DataError as exc:
        logger.warning("demo report skipped: %s", exc)
        return None
