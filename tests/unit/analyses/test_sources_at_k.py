"""The sources of each query's top and bottom k documents, from merged statistics: exact within
the exact list, bounded beyond it, against a brute-force sort of the whole score matrix."""

import numpy as np
import pytest

from pretrace.analyses.shard_statistics import ShardStatistics
from pretrace.analyses.sources_at_k import source_counts

NAMES = ["code", "facts", "math", "prose"]


def block(n=6000, seed=0):
    rng = np.random.default_rng(seed)
    sources = rng.choice(NAMES, n, p=[0.4, 0.1, 0.2, 0.3]).tolist()
    boost = np.array([{"math": 1.5, "facts": 0.5}.get(s, 0.0) for s in sources])
    scores = rng.standard_normal((3, n)) * rng.lognormal(0, 1, n) + boost * np.array([[1], [0], [-1]])
    return scores.astype(np.float32), sources


def truth(scores, sources, q, k, side):
    """Brute force: sort the query's scores (ties by source name) and count the sources of the k most extreme."""
    codes = np.array([NAMES.index(s) for s in sources])
    values = scores[q] if side == "top" else -scores[q]
    inside = np.nonzero(values > 0)[0]
    order = inside[np.lexsort((codes[inside], -values[inside]))][:k]
    return np.bincount(codes[order], minlength=len(NAMES))


@pytest.mark.parametrize("side", ["top", "bottom"])
def test_sources_at_k_are_exact_within_the_list_and_bounded_beyond(side):
    scores, sources = block()
    parts = [slice(0, 2500), slice(2500, 2501), slice(2501, 6000)]
    stats = ShardStatistics.of(["a", "b", "c"], scores[:, parts[0]], sources=sources[parts[0]], exact_top=300)
    for p in parts[1:]:
        stats = stats.merge(ShardStatistics.of(["a", "b", "c"], scores[:, p], sources=sources[p], exact_top=300))
    assert list(stats.sources) == NAMES
    for q in range(3):
        for k in (1, 50, 300, 301, 1000, 2500, 10_000):
            got, want = source_counts(stats, q, k, side), truth(scores, sources, q, k, side)
            assert got.documents == want.sum()
            if got.documents <= 300:
                assert got.exact and got.estimate.tolist() == want.tolist()
            assert np.all(got.low <= want) and np.all(want <= got.high), (q, k)
            assert np.all(got.low <= got.estimate) and np.all(got.estimate <= got.high)
            assert got.estimate.sum() == pytest.approx(got.documents)


def test_a_source_only_one_shard_has_is_merged_in_by_name():
    scores = np.array([[3.0, 2.0, 1.0, -1.0]], np.float32)
    a = ShardStatistics.of(["q"], scores[:, :2], sources=["zeta", "alpha"])
    b = ShardStatistics.of(["q"], scores[:, 2:], sources=["beta", "alpha"])
    for merged in (a.merge(b), b.merge(a)):
        assert list(merged.sources) == ["alpha", "beta", "zeta"]
        assert source_counts(merged, 0, 2, "top").estimate.tolist() == [1, 0, 1]  # 3.0 zeta, 2.0 alpha
        assert source_counts(merged, 0, 5, "bottom").estimate.tolist() == [1, 0, 0]  # only -1.0 (alpha) is negative


def test_too_many_sources_pool_the_histogram_and_claim_no_split_beyond_the_exact_list(monkeypatch):
    monkeypatch.setattr("pretrace.analyses.shard_statistics.MAX_SOURCES", 3)
    scores, sources = block(2000, seed=1)  # 4 source names > 3
    stats = ShardStatistics.of(["a", "b", "c"], scores[:, :1000], sources=sources[:1000], exact_top=100)
    stats = stats.merge(ShardStatistics.of(["a", "b", "c"], scores[:, 1000:], sources=sources[1000:], exact_top=100))
    assert stats.positive.pooled and stats.positive.source_count.shape[1] == 1
    within = source_counts(stats, 0, 100, "top")
    assert within.exact and within.estimate.tolist() == truth(scores, sources, 0, 100, "top").tolist()
    beyond = source_counts(stats, 0, 500, "top")
    assert np.isnan(beyond.estimate).all() and beyond.high.tolist() == [500.0] * 4 and not beyond.exact
    # the pooled histogram still gives every share of influence (concentration) exactly as before
    np.testing.assert_array_equal(stats.positive.hist_count.sum(axis=1), stats.positive.count)
