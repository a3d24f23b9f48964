"""What a referee reads first: planted facts kept apart from factual queries, cut-offs as corpus
fractions, the baselines' source shares beside influence's, paired tests of influence against
each baseline, and every p-value corrected across the page."""

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from pretrace.analyses.analysis import ReportConfig, analyze
from pretrace.analyses.kinds import kind_groups
from pretrace.analyses.method_sources import method_source_shares
from pretrace.analyses.multiplicity import holm
from pretrace.analyses.report_config import FACTUAL, PLANTED
from pretrace.analyses.shard_statistics import summarize_shard
from pretrace.report import sections
from pretrace.report.html import with_ci
from pretrace.testing.synthetic_shards import synthetic_queries, synthetic_shard

CONFIG = ReportConfig(k=10, bootstrap=100, permutations=50)
N_DOCS = 150


def _queries() -> pa.Table:
    """Synthetic queries, 20 of 5 kinds; two of the four factual ones relabelled as planted facts
    (after scoring: the synthetic scores know only their five kinds)."""
    table = synthetic_queries(20, seed=3)
    kinds = table.column("kind").to_pylist()
    factual = [i for i, k in enumerate(kinds) if k == "factual"]
    for i in factual[:2]:
        kinds[i] = "planted"
    return table.set_column(table.column_names.index("kind"), "kind", pa.array(kinds))


def _attribution(ids: list[str], kinds: list[str]) -> dict[str, pa.Table]:
    """Hand-built attribution tables: influence beats bm25 by 1 nat on every query."""
    gains = pa.table(
        {
            "query_id": [q for q in ids for _ in range(2)],
            "kind": [k for k in kinds for _ in range(2)],
            "method": ["influence", "bm25"] * len(ids),
            "k": [10] * (2 * len(ids)),
            "gain": [x for i in range(len(ids)) for x in (1.0 + 0.01 * i, 0.01 * i)],
        }
    )
    rankings = pa.table(
        {
            "query_id": [q for q in ids for _ in range(4)],
            "method": ["influence", "influence", "bm25", "bm25"] * len(ids),
            "rank": [1, 2, 1, 2] * len(ids),
            "shard": ["s"] * (4 * len(ids)),
            "doc_id": ["d0", "d1", "d2", "d3"] * len(ids),
            "source": ["math", "math", "math", "web"] * len(ids),
        }
    )
    return {"gains": gains, "rankings": rankings}


@pytest.fixture(scope="module")
def analysis():
    queries = _queries()
    ids = queries.column("id").to_pylist()
    doc_ids, scores, docs = synthetic_shard(synthetic_queries(20, seed=3), N_DOCS, 0, seed=3)
    stats, top = summarize_shard(ids, doc_ids, scores, docs, queries, k=CONFIG.k, exact_top=100)
    return analyze(stats, top, queries, CONFIG, attribution=_attribution(ids, queries.column("kind").to_pylist()))


def test_planted_facts_are_their_own_kind_never_counted_as_factual(analysis):
    a = analysis
    assert ReportConfig().category("planted") == PLANTED and ReportConfig().category("factual") == FACTUAL
    cats = dict(zip(a.queries["kind"].to_list(), a.queries["category"].to_list()))
    assert cats["planted"] == PLANTED and cats["factual"] == FACTUAL
    assert a.kind_order[:2] == ["factual", "planted"]  # planted rows follow factual ones, apart
    n_factual = int((a.queries["kind"] == "factual").sum())
    assert n_factual == 2
    slope_tests = a.result(sections.concentration.compute).power_law_test.filter(pl.col("queries") == "all")
    assert set(slope_tests["factual_queries"]) == {n_factual}
    per_nat = a.result(sections.magnitude.compute).magnitude_comparison
    assert set(per_nat["factual_queries"]) == {n_factual}
    groups = {r["group"]: r["pairs"] for r in a.result(sections.correlation.compute).correlation_groups.to_dicts()}
    assert groups["within factual"] == 1 and groups["within planted"] == 1  # one pair each: planted not pooled
    notes = sections.notes.body(a, {})
    assert "planted (planted)" in notes and "never counted as factual" in notes


def test_the_bm25_source_share_column_sits_beside_influences(analysis):
    a = analysis
    df = a.result(sections.sources.compute).sources_by_method
    corpus = a.corpus_sources
    math_share = corpus["math"] / sum(corpus.values())
    row = df.filter((pl.col("kind") == "factual") & (pl.col("method") == "bm25") & (pl.col("source") == "math")).row(
        0, named=True
    )
    # two factual queries, each with bm25's top 2 = one math and one web document
    assert (row["k"], row["documents"], row["count"]) == (2, 4, 2)
    assert row["ratio"] == pytest.approx(0.5 / math_share)
    mine = df.filter((pl.col("kind") == "factual") & (pl.col("method") == "influence") & (pl.col("source") == "math"))
    assert mine["count"][0] == 4 and mine["ratio"][0] == pytest.approx(1 / math_share)
    assert set(df["method"]) == {"influence", "bm25"}  # the methods the rankings hold, in METHODS order
    # the sources reading quotes the baselines' ratio of the source it calls over-represented
    assert any("in the baselines' top 2 of the same queries: bm25" in line for line in sections.sources.reading(a))


def test_method_source_shares_leave_out_random_and_count_by_hand():
    queries = pl.DataFrame({"id": ["a", "b"], "kind": ["slope", "slope"], "category": ["reasoning"] * 2})
    rankings = pl.DataFrame(
        {
            "query_id": ["a", "a", "b", "b", "a"],
            "method": ["bm25", "bm25", "bm25", "bm25", "random"],
            "source": ["math", "web", "math", "math", "web"],
        }
    )
    df = method_source_shares(rankings, kind_groups(queries), {"math": 1, "web": 3})
    got = {r["source"]: (r["count"], r["share"], r["ratio"]) for r in df.to_dicts()}
    assert got == {"math": (3, 0.75, 3.0), "web": (1, 0.25, pytest.approx(1 / 3))}
    assert set(df["method"]) == {"bm25"}


def test_every_p_value_is_corrected_across_the_page(analysis):
    tests = sections.report_tests(analysis)
    assert set(tests["section"]) >= {"concentration", "attribution"}
    np.testing.assert_allclose(tests["p_holm"].to_numpy(), holm(tests["p"].to_numpy()))
    paired = tests.filter(pl.col("section") == "attribution")
    assert paired["comparison"].to_list() == ["influence vs bm25: tail patch gain, all queries"]
    # influence beats bm25 by 1 nat on all 20 queries: the sign-flip p is (1 + 0) / (1 + 10,000)
    assert paired["p"][0] == pytest.approx(1 / 10_001)
    assert any("Holm" in line for line in sections.attribution.reading(analysis))
    assert "p_holm" in sections.tables(analysis)["report_tests"].columns  # written as report_tests.parquet


def test_cut_offs_are_stated_as_corpus_fractions_and_wide_ones_flagged(analysis):
    lines = sections.cutoffs.reading(analysis)
    # k = 10 of 150 documents is 6.7%: more than 5%
    assert lines[0].startswith("top and bottom documents per query") and "6.67% of the corpus's 150" in lines[0]
    assert "Warning" in lines[0]
    table = analysis.result(sections.cutoffs.compute).cutoffs
    assert table["too_wide"].to_list() == [True, True, True]  # k = 10, search depth 150 of 150, tail-patch k = 10
    narrow = analyze(analysis.stats, analysis.top, _queries(), ReportConfig(top_fraction=0.01))
    assert narrow.config.k == 2 and narrow.cutoffs()[0].defined_by == "fraction"  # ceil(1% of 150)
    assert "Warning" not in sections.cutoffs.reading(narrow)[0]


def test_intervals_over_fewer_than_ten_queries_are_marked():
    df = pl.DataFrame({"queries": [8, 12], "m": [1.0, 2.0], "lo": [0.5, 1.5], "hi": [1.5, 2.5]})
    cells = with_ci(df, "m", "lo", "hi", "cell")["cell"].to_list()
    assert cells[0].endswith("(n = 8 < 10: rough)") and "rough" not in cells[1]


def test_sources_correlations_and_per_nat_split_by_the_models_answers_count_by_brute_force():
    """20 synthetic queries of which the model answers some correctly: the split tables hold, per
    kind and answer, exactly the sources of those queries' top k by raw score, the split
    correlation groups the mean Pearson r of exactly the pairs both answered alike, and the
    per-nat ratio on the correct ones exactly theirs."""
    base = synthetic_queries(20, seed=3)
    ids, kinds = base.column("id").to_pylist(), base.column("kind").to_pylist()
    correct = [None if k == "control" else i % 3 != 0 for i, k in enumerate(kinds)]
    queries = base.append_column("correct", pa.array(correct, pa.bool_()))
    doc_ids, scores, docs = synthetic_shard(base, N_DOCS, 0, seed=3)
    stats, top = summarize_shard(ids, doc_ids, scores, docs, queries, k=CONFIG.k, exact_top=100)
    a = analyze(stats, top, queries, CONFIG)
    source_of = np.asarray(docs.column("source").to_pylist(), dtype=object)
    by_answer = a.result(sections.sources.compute).sources_by_answer.filter(pl.col("side") == "top")
    checked = {"factual", "arithmetic", "slope", "linear", "reasoning (all)"}  # control answers are not checked
    assert set(by_answer["kind"]) == checked
    for kind in ("factual", "slope"):
        for answered, value in (("correctly", True), ("incorrectly", False)):
            rows = [i for i, (k, c) in enumerate(zip(kinds, correct)) if k == kind and c is value]
            best = [np.argsort(-scores[i], kind="stable")[: CONFIG.k] for i in rows]
            assert all((scores[i][b] > 0).all() for i, b in zip(rows, best))
            expected = {s: int(sum((source_of[b] == s).sum() for b in best)) for s in set(source_of)}
            got = by_answer.filter((pl.col("kind") == kind) & (pl.col("answered") == answered))
            assert set(got["queries"]) == {len(rows)}
            assert {r["source"]: r["count"] for r in got.to_dicts() if r["count"]} == {
                s: n for s, n in expected.items() if n
            }
    r = np.corrcoef(scores.astype(np.float64))
    groups = {g["group"]: g for g in a.result(sections.correlation.compute).correlation_groups.to_dicts()}
    reasoning = [i for i, k in enumerate(kinds) if k in ("arithmetic", "slope", "linear")]
    for answered, value in (("correctly", True), ("incorrectly", False)):
        pairs = [
            r[i, j]
            for i in reasoning
            for j in reasoning
            if i < j and kinds[i] == kinds[j] and correct[i] is value and correct[j] is value
        ]
        g = groups[f"same reasoning kind, both answered {answered}"]
        assert g["pairs"] == len(pairs) and g["mean_r"] == pytest.approx(np.mean(pairs), abs=1e-5)
    nats = -np.asarray(base.column("logprob").to_pylist())
    per_nat = np.clip(scores.astype(np.float64), 0, None).sum(axis=1) / nats
    mean = {
        category: per_nat[[i for i, k in enumerate(kinds) if k in members and correct[i] is True]].mean()
        for category, members in (("factual", {"factual"}), ("reasoning", {"arithmetic", "slope", "linear"}))
    }
    ratio = a.result(sections.magnitude.compute).magnitude_comparison.filter(
        (pl.col("queries") == "answered correctly") & (pl.col("measure") == "positive_per_nat")
    )
    assert ratio["reasoning_over_factual"][0] == pytest.approx(mean["reasoning"] / mean["factual"], rel=1e-5)
    assert any("Split by the model's own answers" in line for line in sections.correlation.reading(a))
    assert any("On the queries the model answers correctly" in line for line in sections.magnitude.reading(a))
    assert any("answered correctly" in line for line in sections.sources.reading(a))
