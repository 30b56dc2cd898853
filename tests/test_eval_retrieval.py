"""Retrieval metrics on constructed cases whose answers are known by hand."""

import math

import pytest
import torch
import torch.nn.functional as F

from medclip.errors import DataError
from medclip.eval.retrieval import (
    alignment,
    embedding_metrics,
    metrics_from_ranks,
    retrieval_metrics,
    retrieval_ranks,
    uniformity,
    uniformity_logsumexp,
)


def _unit(rows):
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=1)


def test_recall_and_median_rank_known_answer():
    # 4 orthonormal text embeddings; image i is closest to text perm[i], with its own text ranked second
    # or worse, chosen by hand so the ranks are known.
    texts = torch.eye(4)
    # image 0 -> exact text 0 (rank 1); image 1 -> prefers text 2, then text 1 (rank 2);
    # image 2 -> prefers 3, then 0, then 2 (rank 3); image 3 -> exact (rank 1)
    images = _unit([[1.0, 0.1, 0.0, 0.0],
                    [0.0, 0.5, 1.0, 0.0],
                    [0.6, 0.0, 0.3, 1.0],
                    [0.0, 0.0, 0.0, 1.0]])
    m = retrieval_metrics(images, texts, ks=(1, 2, 3))
    i2t_ranks = [1, 2, 3, 1]
    assert m["i2t_R@1"] == pytest.approx(2 / 4)
    assert m["i2t_R@2"] == pytest.approx(3 / 4)
    assert m["i2t_R@3"] == pytest.approx(1.0)
    assert m["i2t_median_rank"] == pytest.approx(1.5)
    assert m["i2t_mean_rank"] == pytest.approx(sum(i2t_ranks) / 4)
    # text->image: text j scores images by column j of images @ eye = images[:, j]
    sims = images.T  # (text, image)
    t2i_ranks = [int((sims[j] > sims[j, j]).sum()) + 1 for j in range(4)]
    assert m["t2i_R@1"] == pytest.approx(sum(r <= 1 for r in t2i_ranks) / 4)
    assert m["t2i_median_rank"] == pytest.approx(float(torch.tensor(t2i_ranks, dtype=torch.float).quantile(0.5)))


def test_identical_report_text_counts_as_hit():
    # image 1 is closest to text 0, which has the same words as its own report (text 1) -> a hit
    texts = _unit([[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    images = _unit([[1, 0, 0], [1, 0.2, 0], [0, 0, 1]])
    reports = ["No acute disease.", "No  acute disease.", "Right lower lobe pneumonia."]
    strict = retrieval_metrics(images, texts, ks=(1,))
    lenient = retrieval_metrics(images, texts, texts=reports, ks=(1,))
    assert strict["i2t_R@1"] == pytest.approx(2 / 3)
    assert lenient["i2t_R@1"] == pytest.approx(1.0)
    assert lenient["n_distinct_texts"] == 2


def test_perfect_retrieval_and_chunking_agree():
    torch.manual_seed(0)
    x = F.normalize(torch.randn(50, 16), dim=1)
    m = retrieval_metrics(x, x, ks=(1,), chunk=7)
    assert m["i2t_R@1"] == 1.0 and m["t2i_R@1"] == 1.0 and m["i2t_median_rank"] == 1.0
    y = F.normalize(torch.randn(50, 16), dim=1)
    assert retrieval_metrics(x, y, chunk=7) == retrieval_metrics(x, y, chunk=1000)


def test_alignment_and_uniformity_values():
    x = _unit([[1, 0], [0, 1]])
    y = _unit([[0, 1], [1, 0]])
    assert alignment(x, x) == pytest.approx(0.0)
    assert alignment(x, y) == pytest.approx(2.0)  # ||e1 - e2||^2 = 2
    # two antipodal points: squared distance 4 -> log exp(-8) = -8; collapsed points -> 0
    assert uniformity(_unit([[1, 0], [-1, 0]])) == pytest.approx(-8.0)
    assert uniformity(_unit([[1, 0], [1, 0], [1, 0]])) == pytest.approx(0.0)
    # spread-out random points are more uniform (lower) than clustered ones
    torch.manual_seed(0)
    spread = F.normalize(torch.randn(200, 32), dim=1)
    clustered = F.normalize(torch.randn(200, 32) * 0.1 + 1.0, dim=1)
    assert uniformity(spread) < uniformity(clustered) - 1.0
    assert not math.isnan(embedding_metrics(spread, spread)["uniformity_text"])


def test_shape_errors_are_one_line():
    with pytest.raises(DataError, match="same N"):
        retrieval_metrics(torch.zeros(3, 4), torch.zeros(2, 4))
    with pytest.raises(DataError, match="2 texts for 3"):
        retrieval_metrics(torch.eye(3), torch.eye(3), texts=["a", "b"])


def test_tiled_uniformity_equals_pdist_reference():
    torch.manual_seed(0)
    x = F.normalize(torch.randn(300, 16), dim=1)
    reference = float(torch.pdist(x.double(), p=2).pow(2).mul(-2).exp().mean().log())
    for chunk in (1, 7, 299, 1024):
        assert uniformity(x, chunk=chunk) == pytest.approx(reference, abs=1e-9)
    assert uniformity(x[:2]) == pytest.approx(-2 * float((x[0] - x[1]).pow(2).sum()), abs=1e-6)


def test_row_shares_of_ranks_and_uniformity_combine_to_the_whole():
    """What each torchrun process scores (a slice of the queries, a slice of the pair rows) adds up exactly."""
    g = torch.Generator().manual_seed(3)
    img = F.normalize(torch.randn(37, 8, generator=g), dim=1)
    txt = F.normalize(img + 0.7 * torch.randn(37, 8, generator=g), dim=1)
    texts = [f"report {i % 13}" for i in range(37)]  # repeated reports: duplicate hits in every share
    whole = retrieval_ranks(img, txt, texts)
    cuts = [0, 5, 5, 20, 37]  # uneven shares, one empty
    shares = [retrieval_ranks(img, txt, texts, range(a, b), chunk=4) for a, b in zip(cuts, cuts[1:])]
    assert [len(s[0]) for s in shares] == [5, 0, 15, 17]
    for d in (0, 1):
        assert torch.equal(torch.cat([s[d] for s in shares]), whole[d])
    assert (whole[0] > 1).any() and (whole[0] == 1).any()  # neither all hits nor all misses
    expected = retrieval_metrics(img, txt, texts)
    assert metrics_from_ranks(*whole) == {k: v for k, v in expected.items() if k not in ("n", "n_distinct_texts")}
    for x in (img, txt):
        parts = torch.stack([uniformity_logsumexp(x, range(a, b), chunk=3) for a, b in ((0, 2), (2, 2), (2, 36))])
        assert parts[1] == float("-inf")
        assert float(torch.logsumexp(parts, 0) - math.log(37 * 36 / 2)) == pytest.approx(uniformity(x), abs=1e-12)
