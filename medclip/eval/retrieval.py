"""Image-report retrieval metrics and embedding geometry.

* :func:`retrieval_metrics`: image→text and text→image Recall@K and median rank. A hit is the paired
  report **or any report with the identical text** (real archives repeat reports such as "no acute
  cardiopulmonary process"; counting those as misses would punish the model for the data).
* :func:`alignment` and :func:`uniformity`: Wang & Isola (2020), "Understanding contrastive
  representation learning through alignment and uniformity on the hypersphere".

All functions take L2-normalised feature tensors ``(N, D)`` where row ``i`` of the image features is
paired with row ``i`` of the text features. Similarities are computed in chunks of queries, so
memory stays ``O(chunk * N)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..defaults import EVAL_BATCH_SIZE
from ..errors import DataError


def chance_recall(texts: list[str], k: int) -> float:
    """Expected Recall@K of a uniformly random ranking when identical texts all count as hits."""
    normalised = [" ".join(str(t).split()) for t in texts]
    counts: dict[str, int] = {}
    for t in normalised:
        counts[t] = counts.get(t, 0) + 1
    n, total = len(texts), 0.0
    for t in normalised:
        miss = 1.0
        for j in range(min(k, n)):  # P(first k drawn keys are all wrong)
            miss *= max(0, n - counts[t] - j) / (n - j)
        total += 1 - miss
    return total / max(n, 1)


def _text_groups(texts: Sequence[str] | None, n: int) -> torch.Tensor:
    """Integer id per row; rows with identical (whitespace-normalised) text share an id."""
    if texts is None:
        return torch.arange(n)
    if len(texts) != n:
        raise DataError(f"retrieval: got {len(texts)} texts for {n} feature rows; pass one report per pair")
    ids: dict[str, int] = {}
    return torch.tensor([ids.setdefault(" ".join(str(t).split()), len(ids)) for t in texts])


def distinct_texts(texts: Sequence[str]) -> int:
    """How many different reports ``texts`` holds, by the rule that makes them count as the same (whitespace)."""
    return int(_text_groups(texts, len(texts)).unique().numel()) if len(texts) else 0


def _first_hit_ranks(queries: torch.Tensor, keys: torch.Tensor, query_group: torch.Tensor,
                     key_group: torch.Tensor, chunk: int) -> torch.Tensor:
    """1-based rank of the best-scored correct key for every query (ties count against the query)."""
    ranks = []
    for start in range(0, queries.shape[0], chunk):
        sims = queries[start:start + chunk] @ keys.T  # (q, N)
        correct = query_group[start:start + chunk, None] == key_group[None, :]
        best_correct = sims.masked_fill(~correct, float("-inf")).amax(dim=1, keepdim=True)
        # keys strictly better than the best correct one, plus wrong keys tied with it (pessimistic)
        better = (sims > best_correct) | ((sims == best_correct) & ~correct)
        ranks.append(better.sum(dim=1) + 1)
    return torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long)


@torch.no_grad()
def retrieval_ranks(image_features: torch.Tensor, text_features: torch.Tensor, texts: Sequence[str] | None = None,
                    rows: range | None = None, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """1-based rank of the first correct key (the pair, or an identical report) for each query in ``rows``.

    The ranks of a split of the rows, concatenated in row order, are the ranks of all rows: processes can
    each score a slice of the queries against every key (``O(len(rows) · N · D)`` work).

    Args:
        image_features: ``(N, D)`` normalised image embeddings, row ``i`` paired with text row ``i``.
        text_features: ``(N, D)`` normalised report embeddings.
        texts: the ``N`` reports (identical texts count as correct for each other); None: only the pair.
        rows: the queries to rank (default all ``N``).
        chunk: queries scored at once.

    Returns:
        ``(image→text ranks, text→image ranks)``, long tensors of ``len(rows)``.
    """
    n = image_features.shape[0]
    rows = range(n) if rows is None else rows
    img, txt = image_features.float(), text_features.float()
    groups = _text_groups(texts, n)
    picked = slice(rows.start, rows.stop)
    return (_first_hit_ranks(img[picked], txt, groups[picked], groups, chunk),
            _first_hit_ranks(txt[picked], img, groups[picked], groups, chunk))


def metrics_from_ranks(i2t: torch.Tensor, t2i: torch.Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """``{i2t,t2i}_R@K``, median and mean rank from the ranks of all ``N`` queries (:func:`retrieval_ranks`)."""
    out: dict[str, float] = {}
    for name, ranks in (("i2t", i2t.float()), ("t2i", t2i.float())):
        for kk in ks:
            out[f"{name}_R@{kk}"] = float((ranks <= kk).float().mean())
        out[f"{name}_median_rank"] = float(ranks.quantile(0.5))
        out[f"{name}_mean_rank"] = float(ranks.mean())
    return out


@torch.no_grad()
def retrieval_metrics(image_features: torch.Tensor, text_features: torch.Tensor,
                      texts: Sequence[str] | None = None, ks: Sequence[int] = (1, 5, 10),
                      chunk: int = 1024) -> dict[str, float]:
    """Recall@K and median rank for image→text and text→image retrieval.

    Args:
        image_features: ``(N, D)`` image embeddings (normalised), row ``i`` paired with text row ``i``.
        text_features: ``(N, D)`` report embeddings (normalised).
        texts: the ``N`` report strings; identical texts count as correct for each other. ``None``
            counts only the exact pair.
        ks: the K of Recall@K.
        chunk: queries scored at once.

    Returns:
        dict with ``i2t_R@K``, ``t2i_R@K`` (fractions in [0, 1]), ``i2t_median_rank``,
        ``t2i_median_rank`` (1 is perfect), ``n`` (pairs) and ``n_distinct_texts``.

    Raises:
        DataError: when shapes do not pair up.
    """
    check_pairs(image_features, text_features)
    n = image_features.shape[0]
    out: dict[str, float] = {"n": n, "n_distinct_texts": int(_text_groups(texts, n).unique().numel())}
    out.update(metrics_from_ranks(*retrieval_ranks(image_features, text_features, texts, chunk=chunk), ks))
    return out


def check_pairs(image_features: torch.Tensor, text_features: torch.Tensor) -> None:
    """Raise :class:`~medclip.errors.DataError` unless both are ``(N, D)`` with the same ``N >= 1``."""
    if image_features.ndim != 2 or image_features.shape != text_features.shape:
        raise DataError(f"retrieval: image features {tuple(image_features.shape)} and text features "
                        f"{tuple(text_features.shape)} must both be (N, D) with the same N")
    if image_features.shape[0] == 0:
        raise DataError("retrieval: no pairs to evaluate (empty manifest?)")


def alignment(x: torch.Tensor, y: torch.Tensor, alpha: float = 2.0) -> float:
    """Alignment ``E ||f(x) - g(y)||^alpha`` over positive pairs (lower is better; 0 = identical).

    Args:
        x: ``(N, D)`` normalised embeddings.
        y: ``(N, D)`` normalised embeddings paired row by row with ``x``.
        alpha: the exponent (2 in the paper).
    """
    if x.shape != y.shape:
        raise DataError(f"alignment: shapes {tuple(x.shape)} and {tuple(y.shape)} must match")
    return float((x.float() - y.float()).norm(dim=1).pow(alpha).mean())


def uniformity(x: torch.Tensor, t: float = 2.0, chunk: int = 1024) -> float:
    """Uniformity ``log E exp(-t ||f(x) - f(x')||^2)`` over distinct pairs (lower is more uniform).

    Ranges from 0 (all embeddings collapsed to one point) down to about ``-4`` for points spread
    uniformly on a high-dimensional sphere with ``t = 2``. Computed in row blocks with a running
    log-sum-exp: memory ``O(chunk · N)`` instead of the ``N²/2`` distances of ``torch.pdist``.

    Args:
        x: ``(N, D)`` normalised embeddings, ``N >= 2``.
        t: the temperature (2 in the paper).
        chunk: rows per block.
    """
    n = x.shape[0]
    if n < 2:
        raise DataError("uniformity needs at least 2 embeddings")
    return float(uniformity_logsumexp(x, range(n - 1), t, chunk) - math.log(n * (n - 1) / 2))


def uniformity_logsumexp(x: torch.Tensor, rows: range, t: float = 2.0, chunk: int = 1024) -> torch.Tensor:
    """``log Σ exp(-t ||x_i - x_j||²)`` over the pairs ``j > i`` with ``i`` in ``rows`` (float64; -inf for none).

    The log-sum-exp of the values of a split of ``range(N - 1)`` is that of all distinct pairs, so processes
    can each take a slice of the rows (:func:`uniformity` subtracts ``log(N(N-1)/2)``).

    Args:
        x: ``(N, D)`` normalised embeddings.
        rows: first members ``i`` of the pairs (a contiguous range).
        t: the temperature.
        chunk: rows per block.
    """
    n = x.shape[0]
    x = x.detach().double()
    sq_norm = x.pow(2).sum(1)
    parts = []
    for start in range(rows.start, min(rows.stop, n - 1), chunk):
        stop = min(start + chunk, rows.stop, n - 1)  # block rows i in [start, stop) pair with columns j > i
        sq = (sq_norm[start:stop, None] + sq_norm[None, start + 1:] - 2 * x[start:stop] @ x[start + 1:].T).clamp_min(0)
        upper = torch.arange(n - start - 1)[None, :] >= torch.arange(stop - start)[:, None]
        parts.append(torch.logsumexp(-t * sq[upper], 0))
    return torch.logsumexp(torch.stack(parts), 0) if parts else torch.tensor(float("-inf"), dtype=torch.float64)


def embedding_metrics(image_features: torch.Tensor, text_features: torch.Tensor,
                      texts: Sequence[str] | None = None, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Retrieval metrics plus alignment and image/text uniformity in one dict (for logs and reports)."""
    out = retrieval_metrics(image_features, text_features, texts, ks)
    out["alignment"] = alignment(image_features, text_features)
    out["uniformity_image"] = uniformity(image_features)
    out["uniformity_text"] = uniformity(text_features)
    return out


def evaluate_retrieval(model, manifest: str, split: str | None = None,
                       sections: Sequence[str] | None = ("findings", "impression"), ks: Sequence[int] = (1, 5, 10),
                       batch_size: int = EVAL_BATCH_SIZE, num_workers: int = 0,
                       progress: bool = True) -> tuple[dict, object]:
    """Retrieval metrics of ``model`` on the image-report pairs of a manifest.

    Rows are loaded and checked by the data layer (:func:`medclip.data.manifest.load_manifest` and
    ``check_manifest``): rows with a missing image or empty report are quarantined, not counted.

    Args:
        model: a :class:`medclip.CLIP`.
        manifest: the manifest CSV (``image`` and ``report`` columns, optional ``split``).
        split: evaluate only rows of this split (``test``); None: all rows.
        sections: report sections used as text (None: whole report).
        ks: the K of Recall@K.
        batch_size: images per forward pass.
        num_workers: DataLoader workers.
        progress: show progress bars.

    Returns:
        ``(metrics dict, quarantine DataFrame)``; the metrics include ``n_quarantined``.
    """
    import pandas as pd

    from ..data.manifest import check_manifest, load_manifest
    from ..tokenizer import get_tokenizer
    from .inputs import encode_images
    from .prompts import encode_texts

    good, quarantine = check_manifest(load_manifest(manifest), sections, verify_images=False)
    if split:
        if not (good["split"] == split).any():
            raise DataError(f"{manifest}: no rows with split '{split}' (splits present: "
                            f"{sorted(set(good['split']) - {''}) or 'none'}); drop --split or fix the manifest")
        good = good[good["split"] == split].reset_index(drop=True)
    model.eval()
    features, kept, bad = encode_images(model, good["image"].tolist(), batch_size=batch_size,
                                        num_workers=num_workers, progress=progress)
    unreadable = pd.DataFrame([(int(good["line"].iat[i]), good["image_raw"].iat[i], r) for i, r in bad],
                              columns=quarantine.columns)
    good = good.iloc[kept].reset_index(drop=True)
    texts = good["text"].tolist()
    with torch.no_grad():  # without it every report's autograd graph stayed alive until the metrics were done
        text_features = encode_texts(model, get_tokenizer(model.config), texts)
    metrics = embedding_metrics(features, text_features, texts, ks)
    metrics.update({f"chance_R@{k}": chance_recall(texts, k) for k in ks})
    if len(texts) > 2:  # permutation test against shuffled pairings (medclip.eval.significance)
        from .significance import retrieval_pvalues

        tests = retrieval_pvalues(features, text_features, texts, ks)
        metrics.update({f"{'p_' if k[:3] in ('i2t', 't2i') else ''}{k}": v for k, v in tests.items()})
    quarantine = pd.concat([quarantine, unreadable], ignore_index=True)
    metrics.update({"n_quarantined": int(len(quarantine)), "split": split or "all", "sections": list(sections or [])})
    return metrics, quarantine
