"""Few-shot linear probes on an image tower, against the same architecture randomly initialised.

:func:`probe_vs_random` answers "did pretraining teach the image tower something visual?": for each
seed, ``shots`` positive and ``shots`` negative training images per finding are drawn, a logistic
regression is fitted on the frozen image embeddings of the trained model and of a freshly initialised
model of the same architecture (initialised with that seed), and both are scored by AUROC on the test
images. The verdict is a paired t-test over seeds on the macro AUROC (scipy).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from ..errors import DataError
from .metrics import auroc


def _fit_auroc(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    probe.fit(x_train, y_train)
    return auroc(y_test, probe.predict_proba(x_test)[:, 1])


def _draw_shots(y: np.ndarray, shots: int, rng: np.random.Generator) -> np.ndarray:
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    if len(pos) < shots or len(neg) < shots:
        raise DataError(f"few-shot probe: {shots} shots per class need {shots} positive and {shots} negative "
                        f"training images; there are {len(pos)} and {len(neg)}")
    return np.concatenate([rng.choice(pos, shots, replace=False), rng.choice(neg, shots, replace=False)])


def random_like(model, seed: int):
    """A freshly initialised copy of ``model``'s architecture (weights drawn with ``seed``), in eval mode."""
    torch.manual_seed(seed)
    fresh = type(model)(copy.deepcopy(model.config))
    return fresh.eval()


def probe_vs_random(model, train: pd.DataFrame, test: pd.DataFrame, findings: Sequence[str], shots: int = 16,
                    seeds: Sequence[int] = (0, 1, 2, 3, 4), batch_size: int = 64) -> dict:
    """``shots``-shot linear probes per finding on ``model``'s image tower vs the same tower randomly initialised.

    Args:
        model: the trained :class:`medclip.CLIP`.
        train: rows to draw the shots from (``image`` plus one 0/1 column per finding).
        test: rows to score (same columns).
        findings: the 0/1 label columns.
        shots: positive and negative examples per finding and seed.
        seeds: one draw of shots and one random initialisation per seed.
        batch_size: images per forward pass.

    Returns:
        dict with ``trained`` and ``random`` (finding -> list of AUROC per seed), ``macro_trained`` and
        ``macro_random`` (per seed), ``t`` and ``p`` of the paired t-test on the macro AUROC (one-sided,
        trained > random), ``shots`` and ``seeds``.
    """
    from scipy.stats import ttest_rel

    from .inputs import encode_images

    def features(m, paths) -> np.ndarray:
        with torch.no_grad():
            feats, kept, bad = encode_images(m, list(paths), batch_size=batch_size, progress=False)
        if bad:
            raise DataError(f"few-shot probe: {len(bad)} image(s) unreadable (first: {bad[0][1]})")
        return feats.numpy()

    test_paths = test["image"].tolist()
    trained_test = features(model.eval(), test_paths)
    trained_train = features(model, train["image"])
    out = {"trained": {f: [] for f in findings}, "random": {f: [] for f in findings}, "shots": shots,
           "seeds": list(seeds)}
    for seed in seeds:
        rng = np.random.default_rng(seed)
        draws = {f: _draw_shots(train[f].to_numpy(int), shots, rng) for f in findings}
        used = np.unique(np.concatenate(list(draws.values())))  # only the drawn images go through the random tower
        random_x = features(random_like(model, seed), train["image"].iloc[used].tolist() + test_paths)
        row_of = {int(i): r for r, i in enumerate(used)}
        for finding, idx in draws.items():
            y_train, y_test = train[finding].to_numpy(int)[idx], test[finding].to_numpy(int)
            out["trained"][finding].append(_fit_auroc(trained_train[idx], y_train, trained_test, y_test))
            rows = [row_of[int(i)] for i in idx]
            out["random"][finding].append(_fit_auroc(random_x[rows], y_train, random_x[len(used):], y_test))
    out["macro_trained"] = np.mean([out["trained"][f] for f in findings], axis=0).tolist()
    out["macro_random"] = np.mean([out["random"][f] for f in findings], axis=0).tolist()
    test_result = ttest_rel(out["macro_trained"], out["macro_random"], alternative="greater")
    out["t"], out["p"] = float(test_result.statistic), float(test_result.pvalue)
    return out
