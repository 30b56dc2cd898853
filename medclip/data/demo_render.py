"""Drawing the demo corpus's chest phantoms (:mod:`medclip.data.demo`): anatomy plus visible findings.

Findings are drawn large and bright so that a tiny model sees them at 64 px: an opacity is a dense
blob filling most of a lung zone, an enlarged heart doubles the heart shadow's width, an effusion fills
the lung base up to a meniscus. Anatomy that looks the same on both sides (clavicles across the top,
the spine down the middle) tells "upper" from "lower" and "right" from "left" locally.
"""

from __future__ import annotations

import numpy as np

# (appearance knobs; the README's ablations vary these)
OPACITY_SIGMA, OPACITY_AMPLITUDE = (0.075, 0.09), 0.75
EFFUSION_LEVEL, EFFUSION_DENSITY = (0.50, 0.56), 0.75
HEART_HALF_SIZE = {False: (0.10, 0.14), True: (0.24, 0.16)}  # (width, height) / image


def render_chest(findings: dict, rng: np.random.Generator, size: int = 128,
                 zones: dict | None = None) -> np.ndarray:
    """Draw a chest phantom with the given findings: float64 (H, W) in [0, 1], dense = bright.

    Args:
        findings: ``opacity`` (list of (side, level) zones, or one zone or None), ``cardiomegaly`` (bool),
            ``effusion`` (None, "right" or "left").
        rng: the random generator (sizes, positions, noise).
        size: nominal side in pixels (the image is slightly non-square).
        zones: (side, level) -> (u, v) centre of each zone in image fractions (default: the demo's).
    """
    if zones is None:
        from .demo import ZONES as zones
    h, w = int(size * rng.uniform(1.0, 1.15)), int(size * rng.uniform(0.9, 1.05))
    v, u = np.mgrid[0:h, 0:w]
    v, u = (v + 0.5) / h + rng.normal(0, 0.01), (u + 0.5) / w + rng.normal(0, 0.01)

    def ellipse(cu, cv, ru, rv):
        return ((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2 <= 1.0

    img = np.full((h, w), 0.04)
    img[ellipse(0.5, 0.56, 0.47, 0.52)] = 0.42 + rng.normal(0, 0.02)  # soft tissue
    lungs = {side: ellipse(cu, 0.45, 0.16, 0.30) for side, cu in (("right", 0.30), ("left", 0.70))}
    for mask in lungs.values():
        img[mask] = 0.12 + rng.normal(0, 0.015)
    img[ellipse(0.5, 1.02, 0.45, 0.2)] = 0.62  # diaphragm / abdomen
    heart_ru, heart_rv = HEART_HALF_SIZE[bool(findings["cardiomegaly"])]
    img[ellipse(0.54, 0.70, heart_ru * rng.uniform(0.95, 1.05), heart_rv)] = 0.6
    img[(np.abs(u - 0.5) < 0.035) & (v > 0.05)] = 0.8  # spine
    img[(np.abs(v - 0.15 - 0.08 * np.abs(u - 0.5)) < 0.018) & (np.abs(u - 0.5) < 0.4)] = 0.7  # clavicles
    if findings["effusion"]:
        lung = lungs[findings["effusion"]]
        lateral = np.abs(u - 0.5)  # meniscus: the level climbs towards the chest wall
        level = rng.uniform(*EFFUSION_LEVEL) - 0.25 * np.clip(lateral - 0.2, 0, None)
        img[lung & (v > level)] = EFFUSION_DENSITY
    opacity = findings["opacity"] or []
    for zone in [opacity] if isinstance(opacity, tuple) else opacity:
        cu, cv = zones[zone]
        cu, cv = cu + rng.normal(0, 0.012), cv + rng.normal(0, 0.015)
        sigma = rng.uniform(*OPACITY_SIGMA)
        blob = np.exp(-(((u - cu) ** 2 + (v - cv) ** 2) / (2 * sigma**2)))
        img = img + OPACITY_AMPLITUDE * blob * lungs[zone[0]]
    img = img + rng.normal(0, 0.02, img.shape)
    return np.clip(img, 0.0, 1.0)
