"""Is it above chance? One-sided tests, Holm's correction and the verdict lines every command prints.

Every "above chance" / "not above chance" the tool prints comes from here, never from a point
estimate compared with a number:

* **Retrieval** (:func:`retrieval_pvalues`): a permutation test of the image-report pairing. Under the
  null the model's similarities carry no information about which report belongs to which image, so
  the pairs are shuffled (the similarity matrix and the multiset of reports stay as they are) and
  Recall@K is recomputed with the same hit rule as :func:`medclip.eval.retrieval.retrieval_metrics`
  (the paired report **or any identical report** counts). Duplicate reports therefore raise the null
  distribution exactly as they raise the observed value, and so does a model that ranks one frequent
  report first for every image. ``p = (1 + #{null >= observed}) / (1 + n_permutations)``.
* **AUROC** (:func:`auroc_test`): the percentile bootstrap (patient-level when patient ids are given)
  that gives the 95% CI, and ``p = 2 (1 + #{resampled AUROC <= 0.5}) / (1 + n_bootstrap)`` (capped at
  1), so "the 95% CI excludes 0.5" and "p < 0.05" agree.
* **Holm** (:func:`holm`): the p-values of all verdicts one command prints are corrected together
  (Holm 1979, step-down), and :func:`verdicts` turns them into the words printed beside each number.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

ALPHA = 0.05


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm-adjusted p-values (same order as given): ``max_{j<=i} min(1, (m - j + 1) p_(j))`` in sorted order."""
    p = np.asarray(pvalues, dtype=float)
    if p.size == 0:
        return p
    order = np.argsort(p, kind="mergesort")
    factors = p.size - np.arange(p.size)
    adjusted = np.minimum(1.0, np.maximum.accumulate(p[order] * factors))
    out = np.empty_like(p)
    out[order] = adjusted
    return out


def verdicts(pvalues: Mapping[str, float], alpha: float = ALPHA) -> dict[str, dict]:
    """Holm-correct a command's p-values together; per name ``{"p", "p_holm", "above", "text"}``.

    ``text`` is what is printed beside the number, e.g. ``"above chance, Holm p=0.003"`` or
    ``"NOT above chance, Holm p=0.18"``.
    """
    names = list(pvalues)
    adjusted = holm([pvalues[n] for n in names])
    out = {}
    for name, p, q in zip(names, (pvalues[n] for n in names), adjusted, strict=True):
        above = bool(q < alpha)
        out[name] = {"p": float(p), "p_holm": float(q), "above": above,
                     "text": f"{'above' if above else 'NOT above'} chance, Holm p={format_p(q)}"}
    return out


def format_p(p: float) -> str:
    """Two significant digits (``0.012``, ``0.18``, ``1``); ``<0.001`` below that."""
    if p < 0.001:
        return "<0.001"
    return f"{p:.2g}"


def auroc_test(y: np.ndarray, score: np.ndarray, groups: Sequence | None = None, n_bootstrap: int = 1000,
               seed: int = 0) -> dict:
    """AUROC with its 95% percentile-bootstrap CI and the bootstrap p-value against 0.5.

    Args:
        y: 0/1 labels.
        score: higher = more likely positive.
        groups: patient id per row (cluster bootstrap) or None (image bootstrap).
        n_bootstrap: resamples.
        seed: resampling seed.

    Returns:
        ``{"value", "ci_low", "ci_high", "p", "n_positive", "n_negative"}``; ``p`` is two-sided
        (``p < 0.05`` exactly when the CI excludes 0.5 from below).
    """
    from .metrics import _weighted_auroc, auroc, bootstrap_indices

    y, score = np.asarray(y, dtype=float), np.asarray(score, dtype=float)
    counts = np.stack([np.bincount(i, minlength=y.size) for i in bootstrap_indices(y.size, groups, n_bootstrap,
                                                                                 seed)]).astype(float)
    boot = _weighted_auroc(y, score, counts)
    boot = boot[~np.isnan(boot)]
    lo, hi = (np.percentile(boot, [2.5, 97.5]) if boot.size else (float("nan"), float("nan")))
    p = min(1.0, 2 * (1 + int((boot <= 0.5).sum())) / (1 + boot.size))
    return {"value": auroc(y, score), "ci_low": float(lo), "ci_high": float(hi), "p": p,
            "n_positive": int((y == 1).sum()), "n_negative": int((y == 0).sum())}


def _group_ids(texts: Sequence[str]) -> np.ndarray:
    ids: dict[str, int] = {}
    return np.array([ids.setdefault(" ".join(str(t).split()), len(ids)) for t in texts])


def _ranks(sims: torch.Tensor) -> torch.Tensor:
    """1-based rank of every key within each query row (ties: the later key ranks worse; pessimistic)."""
    order = sims.argsort(dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(1, sims.shape[1] + 1).expand_as(order).contiguous())
    return ranks


def _best_rank_per_group(ranks: torch.Tensor, labels: np.ndarray, n_groups: int) -> torch.Tensor:
    """``(Q, G)``: the best (smallest) rank among the keys of each group label, per query."""
    out = torch.full((ranks.shape[0], n_groups), ranks.shape[1] + 1, dtype=ranks.dtype)
    index = torch.as_tensor(labels, dtype=torch.long).expand(ranks.shape[0], -1)
    return out.scatter_reduce(1, index, ranks, reduce="amin")


def retrieval_pvalues(image_features: torch.Tensor, text_features: torch.Tensor, texts: Sequence[str],
                      ks: Sequence[int] = (1, 5, 10), n_permutations: int = 1000, seed: int = 0,
                      max_work: float = 4e8) -> dict[str, float]:
    """One-sided permutation p-values of image->text and text->image Recall@K against shuffled pairings.

    Args:
        image_features: ``(N, D)`` normalised image embeddings, row ``i`` paired with report ``i``.
        text_features: ``(N, D)`` normalised report embeddings.
        texts: the ``N`` reports (identical texts count as hits for each other).
        ks: the K of Recall@K.
        n_permutations: shuffled pairings drawn (fewer for large N, see ``max_work``).
        seed: permutation seed.
        max_work: caps ``n_permutations * N**2`` (text->image costs ``N**2`` per permutation).

    Returns:
        ``{"i2t_R@K": p, "t2i_R@K": p, ..., "n_permutations": n, "null_i2t_R@K": mean null, ...}``.
    """
    observed, draws = permutation_draws(image_features, text_features, texts, ks, n_permutations, seed, max_work)
    return pvalues_from_draws(observed, draws, ks)


@torch.no_grad()
def permutation_draws(image_features: torch.Tensor, text_features: torch.Tensor, texts: Sequence[str],
                      ks: Sequence[int] = (1, 5, 10), n_permutations: int = 1000, seed: int = 0,
                      max_work: float = 4e8, part: tuple[int, int] = (0, 1)) -> tuple[torch.Tensor, torch.Tensor]:
    """Observed Recall@K and the Recall@K of shuffled pairings (:func:`retrieval_pvalues`'s null draws).

    Every caller draws the same permutations from ``seed``; ``part=(r, w)`` scores only permutations
    ``r, r + w, r + 2w, ...``, so ``w`` processes each take a share and the shares, interleaved back into
    permutation order, are the draws of one process.

    Args:
        image_features, text_features, texts, ks, n_permutations, seed, max_work: as :func:`retrieval_pvalues`.
        part: ``(index, parts)`` of the share of permutations to score.

    Returns:
        ``(observed (2, K), draws (P_part, 2, K))``: rows ``i2t``, ``t2i`` per draw.
    """
    n = int(image_features.shape[0])
    labels = _group_ids(texts)
    n_groups = int(labels.max()) + 1
    sims = image_features.float() @ text_features.float().T
    i2t_by_group = _best_rank_per_group(_ranks(sims), labels, n_groups)  # (N images, G)
    t2i_ranks = _ranks(sims.T)  # (N texts, N images)
    n_perm = int(max(99, min(n_permutations, max_work // max(n * n, 1))))
    rng = np.random.default_rng(seed)
    kt = torch.tensor(list(ks))

    def stats(image_labels: np.ndarray) -> torch.Tensor:
        i2t = i2t_by_group[torch.arange(n), torch.as_tensor(image_labels)]
        t2i = _best_rank_per_group(t2i_ranks, image_labels, n_groups)[torch.arange(n), torch.as_tensor(labels)]
        return torch.stack([(i2t[:, None] <= kt).float().mean(0), (t2i[:, None] <= kt).float().mean(0)])

    index, parts = part
    null = []
    for p in range(n_perm):
        perm = rng.permutation(n)  # every part draws every permutation: one stream, whatever the split
        if p % parts == index:
            null.append(stats(labels[perm]))
    return stats(labels), torch.stack(null) if null else torch.zeros(0, 2, len(kt))


def pvalues_from_draws(observed: torch.Tensor, draws: torch.Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """:func:`retrieval_pvalues`'s result from :func:`permutation_draws` (all ``P`` draws, in permutation order).

    Args:
        observed: ``(2, K)`` observed image->text and text->image Recall@K.
        draws: ``(P, 2, K)`` the same under shuffled pairings.
        ks: the K of Recall@K.
    """
    n_perm = int(draws.shape[0])
    out: dict[str, float] = {"n_permutations": n_perm}
    for d, name in enumerate(("i2t", "t2i")):
        null = draws[:, d].contiguous()  # (P, K)
        exceed = (null >= observed[d] - 1e-12).sum(0)
        for j, k in enumerate(ks):
            out[f"{name}_R@{k}"] = float((1 + exceed[j]) / (1 + n_perm))
            out[f"null_{name}_R@{k}"] = float(null[:, j].mean())
    return out
