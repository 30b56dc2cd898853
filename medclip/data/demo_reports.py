"""Reports of the demo corpus (:mod:`medclip.data.demo`): one short sentence per finding, shuffled, varied.

Each finding has several phrasings (and so has its absence), picked at random per study, and the
sentences come in random order, so a text tower has to learn what the words mean rather than which
template a report came from. An opacity is always named with its side and level words ("left",
"lower", ...), one sentence per opacity, so the zone words are learnt separately.
"""

from __future__ import annotations

import numpy as np

OPACITY = ["Opacity in the {side} {level} zone.", "{Side} {level} zone opacity.",
           "There is an opacity in the {side} {level} zone.", "Focal opacity in the {side} {level} zone.",
           "{Side} {level} zone airspace opacity."]
NO_OPACITY = ["No focal opacity.", "The lungs are clear.", "No airspace opacity.", "Clear lungs."]
CARDIOMEGALY = ["The heart is enlarged.", "Cardiomegaly.", "Enlarged cardiac silhouette.", "Heart size is enlarged."]
NORMAL_HEART = ["Normal heart size.", "The heart is not enlarged.", "Heart size is normal.",
                "Normal cardiac silhouette."]
EFFUSION = ["{Side} pleural effusion.", "There is a {side} pleural effusion.", "{Side} effusion.",
            "Fluid in the {side} pleural space."]
NO_EFFUSION = ["No pleural effusion.", "No effusion.", "No pleural fluid."]
NORMAL = ["No acute cardiopulmonary disease.", "Normal chest.", "No acute findings."]
P_NEGATIVE_SENTENCE = 0.6  # chance that each absent finding is stated ("No pleural effusion.")


def _say(rng: np.random.Generator | None, phrasings: list[str], side: str = "", level: str = "") -> str:
    text = phrasings[0 if rng is None else int(rng.integers(len(phrasings)))]
    return text.format(side=side, level=level, Side=side.capitalize())


def make_report(findings: dict, rng: np.random.Generator | None = None) -> str:
    """A report for one study's findings: short sentences in random order (``rng=None``: fixed, first phrasing).

    Args:
        findings: ``opacity`` (list of (side, level) zones), ``cardiomegaly`` (bool), ``effusion``
            (None, "right" or "left").
        rng: random generator for phrasing, order and which negatives are stated.
    """
    fixed = rng is None

    def pick(phrasings, *words):
        return _say(rng, phrasings, *words)

    zones = findings["opacity"] or []
    zones = [zones] if isinstance(zones, tuple) else zones
    positive = [pick(OPACITY, side, level) for side, level in zones]
    if findings["cardiomegaly"]:
        positive.append(pick(CARDIOMEGALY))
    if findings["effusion"]:
        positive.append(pick(EFFUSION, findings["effusion"]))
    negative = [pick(options) for options, present in ((NO_OPACITY, bool(zones)),
                                                       (NORMAL_HEART, findings["cardiomegaly"]),
                                                       (NO_EFFUSION, bool(findings["effusion"])))
                if not present and (fixed or rng.random() < P_NEGATIVE_SENTENCE)]
    if not positive:
        negative.append(pick(NORMAL))
    sentences = positive + negative
    if not fixed:
        sentences = [sentences[i] for i in rng.permutation(len(sentences))]
    return " ".join(sentences)
