"""Per-shard statistics: exact merges, top lists, histogram bounds, concentration and power laws."""

import itertools

import numpy as np
import pyarrow as pa
import pytest
import torch

from pretrace.analyses.concentration import (
    fit_power_law,
    head_ranks,
    power_laws,
    share_bound,
    shares,
    top_sum,
    welch_test,
)
from pretrace.analyses.shard_statistics import ShardStatistics, bin_edges, fraction_rank, log_bins, summarize_shard
from pretrace.analyses.top_documents import merge_top_documents, top_documents
from pretrace.errors import InputError
from pretrace.store.storage import Storage


def split(n, sizes):
    """Column ranges of consecutive shards of the given sizes (the rest goes to the last)."""
    edges = np.cumsum([0, *sizes])
    return [slice(a, b) for a, b in zip(edges[:-1], edges[1:])] + [slice(edges[-1], n)]


def merged(parts):
    out = parts[0]
    for p in parts[1:]:
        out = out.merge(p)
    return out


def assert_same_statistics(a: ShardStatistics, b: ShardStatistics):
    assert a.query_ids == b.query_ids and a.n == b.n
    np.testing.assert_allclose(a.mean, b.mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(a.comoment, b.comoment, rtol=1e-10, atol=1e-9)
    for x, y in ((a.positive, b.positive), (a.negative, b.negative)):
        np.testing.assert_allclose(x.total, y.total, rtol=1e-12)
        np.testing.assert_array_equal(x.count, y.count)
        np.testing.assert_array_equal(x.extreme, y.extreme)
        assert x.hist_offset == y.hist_offset
        np.testing.assert_array_equal(x.hist_count, y.hist_count)
        np.testing.assert_allclose(x.hist_sum, y.hist_sum, rtol=1e-12)
    for name in ("scores", "keys", "found"):
        np.testing.assert_array_equal(getattr(a.search, name), getattr(b.search, name))
    assert a.sources == b.sources
    np.testing.assert_array_equal(a.target_docs, b.target_docs)


@pytest.fixture
def block():
    rng = np.random.default_rng(0)
    q, n = 6, 3000
    factor = rng.standard_normal(n)
    scores = (rng.standard_normal((q, n)) + np.linspace(0, 2, q)[:, None] * factor) * rng.lognormal(0, 1, n)
    scores += np.array([0, 50, -3, 0, 1e3, 0])[:, None]  # large means: cancellation would show
    return [f"q{i}" for i in range(q)], scores.astype(np.float32)


def test_correlation_from_shard_statistics_equals_corrcoef_on_the_full_matrix(block):
    ids, scores = block
    parts = [ShardStatistics.of(ids, scores[:, s], exact_top=50) for s in split(scores.shape[1], [1, 0, 999, 700])]
    stats = merged(parts)
    assert stats.n == scores.shape[1]
    np.testing.assert_allclose(stats.correlation(), np.corrcoef(scores.astype(np.float64)), atol=1e-10)


def test_merging_shards_in_any_order_equals_the_statistics_of_all_documents(block):
    ids, scores = block
    docs = [f"d{i}" for i in range(scores.shape[1])]
    whole = ShardStatistics.of(ids, scores, exact_top=50, doc_ids=docs)
    parts = [
        ShardStatistics.of(ids, scores[:, s], exact_top=50, doc_ids=docs[s])
        for s in split(scores.shape[1], [500, 1, 1200])
    ]
    for order in itertools.permutations(parts):
        assert_same_statistics(merged(list(order)), whole)
    tree = parts[0].merge(parts[1]).merge(parts[2].merge(parts[3]))  # associativity
    assert_same_statistics(tree, whole)


def test_summaries_computed_in_column_chunks_equal_unchunked_ones(block, monkeypatch):
    ids, scores = block
    whole = ShardStatistics.of(ids, scores, exact_top=50)
    monkeypatch.setattr("pretrace.analyses.shard_statistics._CHUNK_ELEMENTS", 6 * 97)  # chunks of 97 documents
    assert_same_statistics(ShardStatistics.of(ids, scores, exact_top=50), whole)


def test_statistics_survive_safetensors_round_trip(tmp_path, block):
    ids, scores = block
    store = Storage(str(tmp_path))
    for stats in (
        ShardStatistics.of(
            ids, scores, exact_top=20, targets=[["7"], [], ["a", "b"], [], [], ["x"]], texts=["7 a"] * scores.shape[1]
        ),
        ShardStatistics.of(ids, -np.abs(scores[:, :5])),
    ):  # no positive score: empty histogram
        store.write_tensors("s.safetensors", *stats.to_tensors())
        assert_same_statistics(ShardStatistics.from_tensors(*store.read_tensors("s.safetensors")), stats)


def test_merge_refuses_different_query_sets(block):
    ids, scores = block
    a = ShardStatistics.of(ids, scores[:, :10])
    b = ShardStatistics.of(ids[::-1], scores[:, 10:20])
    with pytest.raises(InputError, match="rescore"):
        a.merge(b)


def test_log_bins_hold_their_values():
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.lognormal(0, 20, 100_000), [1.0, 2.0, 0.5, 2 ** (1 / 16)]])
    bins = log_bins(values, 16)
    lo, hi = bin_edges(bins, 16)
    assert (lo <= values).all() and (values < hi).all()


def test_top_lists_merge_into_the_global_top_with_ties_broken_by_id():
    rng = np.random.default_rng(2)
    q, n, k = 3, 400, 7
    scores = rng.integers(-5, 6, size=(q, n)).astype(np.float32)  # many ties
    ids = [f"d{i:04d}" for i in rng.permutation(n)]
    qids = ["a", "b", "c"]
    shard_tables = [top_documents(qids, ids[s], scores[:, s], k) for s in split(n, [100, 3, 150])]
    expected = top_documents(qids, ids, scores, k)
    for order in itertools.permutations(shard_tables):
        got = merge_top_documents(list(order), k)
        assert got.sort_by([("query_id", "ascending"), ("side", "ascending"), ("rank", "ascending")]).equals(
            expected.sort_by([("query_id", "ascending"), ("side", "ascending"), ("rank", "ascending")])
        )
    # the brute-force definition: highest score first, then smallest id
    for qi, qid in enumerate(qids):
        brute = sorted(range(n), key=lambda i: (-scores[qi, i], ids[i]))[:k]
        top = expected.filter(
            pa.compute.and_(pa.compute.equal(expected["query_id"], qid), pa.compute.equal(expected["side"], "top"))
        )
        assert top["doc_id"].to_pylist() == [ids[i] for i in brute]


def test_summarize_shard_aligns_documents_by_id_and_rejects_unknown_ones():
    qids, ids = ["q"], ["b", "a", "c"]
    scores = torch.tensor([[3.0, 1.0, 2.0]])
    documents = pa.table(
        {"doc_id": ["a", "b", "c"], "source": ["s1", "s2", "s1"], "text": ["x 12 y", "no answer here", "12.5 only"]}
    )
    queries = pa.table({"id": ["q"], "answer": ["12"], "intermediates": [[]]})
    stats, top = summarize_shard(qids, ids, scores, documents, queries, k=3)
    assert stats.sources == {"s1": 2, "s2": 1}
    assert stats.target_docs.tolist() == [1]  # only "x 12 y"; "12.5" is not 12
    rows = top.filter(pa.compute.equal(top["side"], "top")).to_pylist()
    assert [r["doc_id"] for r in rows] == ["b", "c", "a"]
    assert [r["source"] for r in rows] == ["s2", "s1", "s1"]
    assert [r["answer_found"] for r in rows] == [False, False, True]
    with pytest.raises(InputError, match="not in the shard"):
        summarize_shard(qids, ["a", "zz", "c"], scores, documents, queries)


# ---------------------------------------------------------------------------- concentration
def power_law_shards(n, beta, shards, exact_top, seed=3):
    """Scores exactly C r^-beta (r = 1..n) for two queries, shuffled over documents and shards."""
    ranks = np.arange(1, n + 1, dtype=np.float64)
    values = np.stack([5.0 * ranks**-beta, 0.1 * ranks ** -(beta / 2)])
    perm = np.random.default_rng(seed).permutation(n)
    scores = values[:, perm].astype(np.float32)
    parts = [
        ShardStatistics.of(["a", "b"], scores[:, s], exact_top=exact_top) for s in np.array_split(np.arange(n), shards)
    ]
    return merged(parts), scores


def test_concentration_shares_recover_a_known_power_law_within_their_error_bound():
    n, beta = 200_000, 0.8
    stats, scores = power_law_shards(n, beta, shards=7, exact_top=100)
    fractions = (1e-4, 1e-3, 1e-2, 1e-1, 0.5)
    rows = shares(stats, fractions)
    for row in rows:
        q = ["a", "b"].index(row["query_id"])
        m = fraction_rank(row["fraction"], n)
        top = np.sort(scores[q].astype(np.float64))[::-1]
        truth = top[:m].sum() / top.sum()
        assert row["documents"] == m
        assert abs(row["share"] - truth) <= row["share_error"] + 1e-9, row
        assert row["share_error"] <= share_bound(16) * truth + 1e-12
        assert row["exact"] == (m <= 100)
        if row["exact"]:
            assert row["share"] == pytest.approx(truth, rel=1e-9)
        else:
            assert row["share"] == pytest.approx(truth, rel=0.01)  # far inside the 2.2% bound in practice
    # the analytic value for query a: sum_{r<=m} r^-beta / sum_{r<=n} r^-beta
    r = np.arange(1, n + 1) ** -beta
    share_1pct = next(x["share"] for x in rows if x["query_id"] == "a" and x["fraction"] == 1e-2)
    assert share_1pct == pytest.approx(r[:2000].sum() / r.sum(), rel=0.01)


@pytest.mark.parametrize("side, sign", [("positive", 1), ("negative", -1)])
def test_top_sum_bound_holds_for_every_rank_on_random_heavy_tailed_scores(side, sign):
    rng = np.random.default_rng(4)
    scores = (rng.standard_normal((1, 20_000)) * rng.lognormal(0, 2, 20_000)).astype(np.float32)
    stats = merged(
        [ShardStatistics.of(["q"], scores[:, s], exact_top=30) for s in np.array_split(np.arange(20_000), 5)]
    )
    truth = np.cumsum(np.clip(np.sort(sign * scores[0].astype(np.float64))[::-1], 0, None))
    for m in list(range(1, 60)) + list(rng.integers(60, 20_000, 300)):
        s = top_sum(stats, 0, int(m), side)
        assert abs(s.value - truth[m - 1]) <= s.error + 1e-9 * truth[-1]
        assert s.error <= share_bound(16) * truth[m - 1] + 1e-9


def test_the_negative_tail_is_the_positive_tail_of_the_negated_scores(block):
    ids, scores = block
    stats, mirrored = ShardStatistics.of(ids, scores), ShardStatistics.of(ids, -scores)
    for mine, theirs in ((stats.negative, mirrored.positive), (stats.positive, mirrored.negative)):
        np.testing.assert_array_equal(mine.count, theirs.count)
        np.testing.assert_allclose(mine.total, theirs.total, rtol=1e-12)
        np.testing.assert_array_equal(mine.extreme, theirs.extreme)
        np.testing.assert_array_equal(mine.hist_count, theirs.hist_count)
    np.testing.assert_array_equal(stats.negative.count, (scores < 0).sum(axis=1))
    np.testing.assert_allclose(stats.abs_sum, np.abs(scores.astype(np.float64)).sum(axis=1), rtol=1e-12)


def test_power_law_slope_is_exact_on_an_exact_power_law():
    ranks = np.arange(1, 1001)
    fit = fit_power_law(7.0 * ranks**-0.6)
    assert fit.slope == pytest.approx(-0.6, abs=1e-9)
    assert fit.r2 == pytest.approx(1.0, abs=1e-12)
    assert np.exp(fit.intercept) == pytest.approx(7.0, rel=1e-9)


@pytest.mark.parametrize("alpha", [1.2, 2.0, 3.0])
def test_power_law_slope_recovers_the_tail_exponent_of_pareto_scores(alpha):
    rng = np.random.default_rng(int(alpha * 10))
    n = 400_000
    scores = (rng.pareto(alpha, n) + 1).astype(np.float32)[None, :]
    stats = merged([ShardStatistics.of(["q"], scores[:, s], exact_top=1000) for s in np.array_split(np.arange(n), 8)])
    fit = fit_power_law(stats.top_values[0], 1000)
    assert fit.slope == pytest.approx(-1 / alpha, abs=0.08 / alpha)
    assert fit.r2 > 0.97


def test_power_law_needs_positive_scores():
    assert np.isnan(fit_power_law(np.array([1.0, 0.5, -1.0, -2.0])).slope)
    assert fit_power_law(np.array([4.0, 2.0, 1.0, 0.0])).ranks == 3


def test_power_law_fits_the_head_of_each_ranking():
    assert [head_ranks(p) for p in (20, 500, 10_000, 10**6)] == [10, 50, 1000, 1000]
    stats, _ = power_law_shards(5000, 0.7, shards=3, exact_top=1000)
    rows = [r for r in power_laws(stats) if r["fit"] == "head"]
    assert [r["ranks"] for r in rows] == [500, 500]
    assert rows[0]["slope"] == pytest.approx(-0.7, abs=1e-6) and rows[1]["slope"] == pytest.approx(-0.35, abs=1e-6)


def test_the_papers_power_law_fits_the_top_500_whatever_the_corpus_size():
    stats, _ = power_law_shards(20_000, 0.7, shards=2, exact_top=1000)
    paper = {r["query_id"]: r for r in power_laws(stats) if r["fit"] == "paper"}
    head = {r["query_id"]: r for r in power_laws(stats) if r["fit"] == "head"}
    assert {r["ranks"] for r in paper.values()} == {500} and {r["ranks"] for r in head.values()} == {1000}
    # the fit over ranks 1..500 is the direct least-squares line of those 500 points
    top = stats.top_values[0][:500].astype(np.float64)
    slope, intercept = np.polyfit(np.log(np.arange(1, 501)), np.log(top), 1)
    assert paper[stats.query_ids[0]]["slope"] == pytest.approx(slope, rel=1e-9)


def test_welch_test_of_slopes_matches_the_formula():
    factual, reasoning = np.array([-1.2, -0.9, -1.1, -1.4, np.nan]), np.array([-0.5, -0.7, -0.4])
    test = welch_test(factual, reasoning)
    f, r = factual[:4], reasoning
    vf, vr = f.var(ddof=1) / f.size, r.var(ddof=1) / r.size
    t = (f.mean() - r.mean()) / np.sqrt(vf + vr)
    dof = (vf + vr) ** 2 / (vf**2 / (f.size - 1) + vr**2 / (r.size - 1))
    assert (test.factual_mean, test.reasoning_mean) == pytest.approx((f.mean(), r.mean()))
    assert test.t == pytest.approx(t) and test.dof == pytest.approx(dof)
    assert 0 < test.p < 0.01  # clearly different means
    assert np.isnan(welch_test(np.array([-1.0]), reasoning).p)  # one factual slope: no test


def test_the_same_id_in_two_files_stays_two_rows_that_name_their_shard():
    qids, scores = ["q"], np.array([[3.0, 1.0]], dtype=np.float32)
    a = top_documents(qids, ["x", "y"], scores, 2, shard="a.jsonl")
    b = top_documents(qids, ["x", "y"], scores, 2, shard="a.parquet")
    merged = merge_top_documents([b, a], 4)
    top = merged.filter(pa.compute.equal(merged["side"], "top")).to_pylist()
    assert [(r["doc_id"], r["shard"]) for r in top] == [
        ("x", "a.jsonl"),
        ("x", "a.parquet"),
        ("y", "a.jsonl"),
        ("y", "a.parquet"),
    ]
