"""Verdicts are tests: permutation p-values for retrieval, bootstrap p for AUROC, Holm's correction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medclip.eval.retrieval import retrieval_metrics
from medclip.eval.significance import (
    auroc_test,
    format_p,
    holm,
    permutation_draws,
    pvalues_from_draws,
    retrieval_pvalues,
    verdicts,
)


def _pairs(n: int, n_texts: int, noise: float, seed: int = 0):
    """Images near their report's embedding (``noise`` controls how near); reports repeat (n_texts distinct)."""
    g = torch.Generator().manual_seed(seed)
    group = torch.arange(n) % n_texts
    base = torch.nn.functional.normalize(torch.randn(n_texts, 16, generator=g), dim=1)
    img = torch.nn.functional.normalize(base[group] + noise * torch.randn(n, 16, generator=g), dim=1)
    return img, base[group], [f"report {int(i)}" for i in group]


def test_holm_matches_hand_computation():
    # sorted p: 0.005 (x4 = 0.02), 0.01 (x3 = 0.03), 0.03 (x2 = 0.06), 0.04 (x1 = 0.04 -> monotone 0.06)
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm([0.5, 0.9]), [1.0, 1.0])  # capped at 1
    out = verdicts({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.005})
    assert [out[k]["above"] for k in "abcd"] == [True, False, False, True]
    assert out["b"]["text"] == "NOT above chance, Holm p=0.06" and out["d"]["text"] == "above chance, Holm p=0.02"
    assert format_p(0.0004) == "<0.001"


def test_retrieval_at_chance_is_not_above_chance():
    img, txt, texts = _pairs(120, 30, noise=0.0)
    img = torch.nn.functional.normalize(torch.randn(120, 16, generator=torch.Generator().manual_seed(5)), dim=1)
    p = retrieval_pvalues(img, txt, texts, n_permutations=300)
    out = verdicts({k: p[k] for k in p if k[:3] in ("i2t", "t2i")})
    assert not any(v["above"] for v in out.values())
    assert min(p[f"{d}_R@{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10)) > 0.01


def test_retrieval_clear_case_is_above_chance_and_uses_duplicate_hits():
    img, txt, texts = _pairs(120, 30, noise=0.6)
    p = retrieval_pvalues(img, txt, texts, n_permutations=300)
    assert all(verdicts({"x": p["i2t_R@5"], "y": p["t2i_R@5"]})[k]["above"] for k in "xy")
    assert p["i2t_R@5"] == pytest.approx(1 / 301)
    # the permutation null mean matches what a shuffled pairing scores with the same hit rule
    observed = retrieval_metrics(img, txt, texts)
    shuffled = retrieval_metrics(img, txt[torch.randperm(120, generator=torch.Generator().manual_seed(1))],
                                 [texts[i] for i in torch.randperm(120, generator=torch.Generator().manual_seed(1))])
    assert observed["i2t_R@5"] > 3 * p["null_i2t_R@5"]
    assert abs(shuffled["i2t_R@5"] - p["null_i2t_R@5"]) < 0.1


def test_one_frequent_report_ranked_first_is_not_above_chance():
    """A model that ranks the commonest report first for every image beats 'random ranking' chance but not the test."""
    n = 100
    texts = ["normal"] * 50 + [f"finding {i}" for i in range(50)]
    txt = torch.nn.functional.normalize(torch.randn(n, 16, generator=torch.Generator().manual_seed(0)), dim=1)
    txt[:50] = txt[0]
    img = txt[0].expand(n, -1).clone() + 0.01 * torch.randn(n, 16, generator=torch.Generator().manual_seed(1))
    img = torch.nn.functional.normalize(img, dim=1)
    assert retrieval_metrics(img, txt, texts)["i2t_R@1"] == pytest.approx(0.5)
    p = retrieval_pvalues(img, txt, texts, n_permutations=300)
    assert p["null_i2t_R@1"] == pytest.approx(0.5, abs=0.01) and p["i2t_R@1"] > 0.5


def test_auroc_at_chance_and_clear_case():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    chance = auroc_test(y, rng.normal(size=200), n_bootstrap=500)
    assert chance["ci_low"] < 0.5 < chance["ci_high"] and chance["p"] > 0.05
    assert not verdicts({"zs": chance["p"]})["zs"]["above"]
    clear = auroc_test(y, y + rng.normal(size=200), groups=np.arange(200) // 2, n_bootstrap=500)
    assert clear["ci_low"] > 0.5 and clear["p"] == pytest.approx(2 / 501) and clear["value"] > 0.7


def test_pretrain_summary_prints_tested_verdicts():
    """The issue's case: R@5 17/50 vs chance 0.273 (p ~ 0.18) must read "NOT above chance", with p beside it."""
    from medclip.commands.pretrain import summary

    result = {"step": 10, "first_loss": 3.0, "last_loss": 2.0, "val_loss": 2.5, "val_n": 50,
              "val_n_distinct_texts": 40, "logit_scale": 14.0}
    for k, (obs, p) in {1: (0.30, 0.0004), 5: (0.34, 0.18), 10: (0.50, 0.03)}.items():
        for d in ("i2t", "t2i"):
            result.update({f"val_{d}_R@{k}": obs, f"val_p_{d}_R@{k}": p, f"val_null_{d}_R@{k}": 0.273,
                           f"val_chance_R@{k}": 0.273})
    text = summary(result, "runs/x")
    r5 = next(line for line in text.splitlines() if line.strip().startswith("R@5"))
    assert r5.count("NOT above chance, Holm p=0.36") == 2  # 0.18 x 2 remaining after the four smaller ones
    r1 = next(line for line in text.splitlines() if line.strip().startswith("R@1:"))
    assert r1.count("above chance, Holm p=0.0024") == 2 and "NOT" not in r1  # 0.0004 x 6 = 0.0024
    assert "Holm-corrected over the 6 printed here" in text


def test_shares_of_the_permutations_interleave_to_the_one_process_draws():
    """Process r of w scores permutations r, r + w, ...: the shares are exactly the single-process draws."""
    img, txt, texts = _pairs(40, 12, noise=1.0)
    observed, draws = permutation_draws(img, txt, texts, n_permutations=101)
    assert draws.shape == (101, 2, 3) and draws.std(0).min() > 0  # real, varying draws
    shares = [permutation_draws(img, txt, texts, n_permutations=101, part=(r, 3)) for r in range(3)]
    assert [len(s[1]) for s in shares] == [34, 34, 33]
    for r, (obs, share) in enumerate(shares):
        assert torch.equal(obs, observed) and torch.equal(share, draws[r::3])
    assert pvalues_from_draws(observed, draws) == retrieval_pvalues(img, txt, texts, n_permutations=101)
