"""The report's analyses on synthetic statistics with known answers, its files, and the asset."""

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from polars.testing import assert_frame_equal

from pretrace.analyses.analysis import ReportConfig, analyze
from pretrace.analyses.answers import count_answer, documents_containing, excerpt, find_answer, normalize_answer
from pretrace.analyses.correlation import group_means, pair_groups, same_kind_permutation_test
from pretrace.analyses.intervals import wilson
from pretrace.analyses.kinds import POOLED
from pretrace.analyses.merge import ShardFiles, merge_shards, merge_stored
from pretrace.analyses.shard_statistics import summarize_shard
from pretrace.evaluation.projection_check import accuracy_table
from pretrace.influence.reranking import RERANK_SCHEMA
from pretrace.influence.token_influence import TOKEN_SCHEMA
from pretrace.report import sections
from pretrace.report.build import build_report, figure_file, markdown_table
from pretrace.store.storage import Storage
from pretrace.testing.synthetic_shards import synthetic_queries, synthetic_shard, write_synthetic_shards

FAST = ReportConfig(k=10, bootstrap=300, permutations=200)


# ------------------------------------------------------------------------------------ answers
@pytest.mark.parametrize(
    "text, answer",
    [
        ("so the result is 12.", "12"),
        ("12 apples", "12"),
        ("x=12", "12"),
        ("(12)", "12"),
        ("5-12 is negative", "12"),
        ("the slope is -3 here", "-3"),
        ("The capital is Paris.", "Paris"),
        ("the capital is paris, of course", "Paris."),
        ("answer: 3.5 exactly", "3.5"),
        ("lives in Buenos\nAires now", "Buenos Aires"),
        ("totals 1,200 items", "1,200"),
        ("totals 29029 items", "29,029"),  # Ruis et al.'s keyword variants: with and without separators
        ("totals 29,029 items", "29029"),
        ("owes -1,200.50 now", "-1200.50"),
    ],
)
def test_answer_search_finds_planted_answers(text, answer):
    assert find_answer(text, answer) is not None


@pytest.mark.parametrize(
    "text, answer",
    [
        ("312", "12"),
        ("12.5", "12"),
        ("3.12", "12"),
        ("123", "12"),
        ("a12", "12"),
        ("12a", "12"),
        ("12,000", "12"),
        ("x = -12", "12"),
        ("(-12)", "12"),
        ("Parisian cafes", "Paris"),
        ("Romeo", "Rome"),
        ("129029", "29029"),
        ("29,0290", "29,029"),
        ("29.029", "29029"),
        ("3.55", "3.5"),
        ("13.5", "3.5"),
        ("no answer at all", "12"),
        ("anything", ""),
        ("anything", None),
    ],
)
def test_answer_search_ignores_near_misses(text, answer):
    assert find_answer(text, answer) is None


def test_answer_counts_and_documents_containing():
    assert count_answer("12 and 12 but not 312 or 12.5", "12") == 2
    texts = ["12 12", "312", "x 12", "", "12.0"]
    assert documents_containing(texts, ["12", "12.", "312", "7", ""]).tolist() == [2, 2, 1, 0, 0]
    assert normalize_answer("  Paris. ") == "Paris"


def test_documents_containing_agrees_with_a_search_of_each_text():
    rng = np.random.default_rng(7)
    pieces = ["12", "312", "12.5", "-12", "5-12", "1,2", "x12", "Lima", "lima,", "Limas", " ", ".", "(", "\n"]
    texts = ["".join(rng.choice(pieces, size=rng.integers(0, 12))) for _ in range(500)]
    answers = ["12", "Lima", "1,2", "2", "-12", "5"]
    expected = [sum(find_answer(t, a) is not None for t in texts) for a in answers]
    assert documents_containing(texts, answers).tolist() == expected
    assert min(expected) >= 0 and max(expected) > 50


def test_excerpt_is_centred_on_the_answer():
    text = "a" * 1000 + " the answer is 42 " + "b" * 1000
    piece = excerpt(text, "42", width=100)
    assert "42" in piece and piece.startswith("…") and piece.endswith("…") and len(piece) <= 102
    assert excerpt("short text", "zz") == "short text"


# ----------------------------------------------------------------------------- hand-made data
def hand_queries():
    return pa.table(
        {
            "id": ["f", "r"],
            "kind": ["factual", "arithmetic"],
            "prompt": ["p1", "p2"],
            "completion": ["c1", "c2"],
            "answer": ["Lima", "12"],
            "intermediates": [[], ["4", "3"]],
            "logprob": [-2.0, -8.0],
        }
    )


def hand_shards():
    """8 documents in 2 shards with sources A A A A B B C C and known rankings."""
    sources = ["A", "A", "A", "A", "B", "B", "C", "C"]
    texts = ["Lima", "12", "4 and 3", "nothing", "Lima is here", "312 and 12.5", "x 12 y", "4"]
    scores = np.array(
        [
            [-5.0, -4.0, 0.5, 0.0, 9.0, 8.0, 1.0, 2.0],  # f: top 4, 5; bottom 0, 1
            [3.0, 0.2, -0.5, 0.1, -1.0, -2.0, 6.0, -7.0],  # r: top 6, 0; bottom 7, 5
        ],
        dtype=np.float32,
    )
    ids = [f"d{i}" for i in range(8)]
    queries = hand_queries()
    out = []
    for cols in (slice(0, 3), slice(3, 8)):
        docs = pa.table({"doc_id": ids[cols], "source": sources[cols], "text": texts[cols]})
        out.append(summarize_shard(["f", "r"], ids[cols], scores[:, cols], docs, queries, k=2))
    return out, scores


def hand_analysis():
    shards, scores = hand_shards()
    stats, top = merge_shards(shards, 2)
    return analyze(stats, top, hand_queries(), ReportConfig(k=2, bootstrap=50, permutations=20)), scores


def test_source_ratios_match_a_hand_count():
    a, _ = hand_analysis()
    got = {
        (r["kind"], r["side"], r["source"]): (r["count"], r["ratio"])
        for r in a.result(sections.sources.compute).sources.to_dicts()
    }
    # corpus shares: A 1/2, B 1/4, C 1/4
    expected = {
        ("factual", "top", "A"): (0, 0.0),
        ("factual", "top", "B"): (2, 4.0),
        ("factual", "top", "C"): (0, 0.0),
        ("factual", "bottom", "A"): (2, 2.0),
        ("factual", "bottom", "B"): (0, 0.0),
        ("arithmetic", "top", "A"): (1, 1.0),
        ("arithmetic", "top", "C"): (1, 2.0),
        ("arithmetic", "top", "B"): (0, 0.0),
        ("arithmetic", "bottom", "B"): (1, 2.0),
        ("arithmetic", "bottom", "C"): (1, 2.0),
        ("arithmetic", "bottom", "A"): (0, 0.0),
    }
    for key, (count, ratio) in expected.items():
        assert got[key][0] == count, key
        assert got[key][1] == pytest.approx(ratio), key
    assert a.corpus_sources == {"A": 4, "B": 2, "C": 2}


def test_sources_at_the_papers_k_pool_each_side_of_a_kinds_rankings():
    a, _ = hand_analysis()
    every = a.result(sections.sources.compute).sources_at_k
    # Ruis et al.'s k as fractions of their 5M documents: 50 ... 500,000 are 0.001% ... 10%, of 8 documents at most 1
    fractions = every.filter(pl.col("cutoff").str.ends_with("of the corpus"))
    assert set(fractions["cutoff"]) == {
        "0.001% of the corpus",
        "0.010% of the corpus",
        "0.100% of the corpus",
        "1.000% of the corpus",
        "10.000% of the corpus",
    }
    assert set(fractions["k"]) == {1} and set(fractions["corpus_fraction"]) == {1 / 8}
    df = every.filter(pl.col("cutoff").str.ends_with("documents"))
    assert set(df["k"]) == {8}  # 50 > 8 documents: the whole corpus, as far as each side reaches
    assert set(df["corpus_fraction"]) == {1.0}
    got = {(r["kind"], r["side"], r["source"]): r for r in df.to_dicts()}
    # f's 5 positive documents: d2 (A), d4 d5 (B), d6 d7 (C); its 2 negative ones d0 d1 (A)
    top_a, top_b = got[("factual", "top", "A")], got[("factual", "top", "B")]
    assert (top_a["documents"], top_a["count"], top_b["count"]) == (5, 1, 2)
    assert top_a["ratio"] == pytest.approx((1 / 5) / (4 / 8)) and top_b["ratio"] == pytest.approx((2 / 5) / (2 / 8))
    assert got[("factual", "bottom", "A")]["count"] == 2 and got[("factual", "bottom", "A")]["documents"] == 2
    assert df["exact"].all()


def test_answers_in_top_documents_are_counted_per_query_and_kind():
    a, _ = hand_analysis()
    found = a.result(sections.answers.compute)
    rows = {r["query_id"]: r for r in found.answers.to_dicts()}
    # f: top documents d4 "Lima is here" (yes) and d5 "312 and 12.5" (no); "Lima" is in d0 and d4
    assert rows["f"]["docs_with_answer"] == 1 and rows["f"]["answer_in_top"] is True
    assert rows["f"]["corpus_docs_with_answer"] == 2
    assert rows["f"]["expected_by_chance"] == pytest.approx(2 * 2 / 8)
    # r: top d6 "x 12 y" (answer yes), d0 "Lima"; intermediates "4", "3": "4 and 3" (d2) and "4" (d7) are not in its top
    assert rows["r"]["docs_with_answer"] == 1
    assert rows["r"]["corpus_docs_with_answer"] == 2  # d1 "12" and d6; not "312 and 12.5"
    assert rows["r"]["intermediates"] == 2 and rows["r"]["intermediates_in_top"] == 0
    kinds = {r["kind"]: r for r in found.answers_kinds.to_dicts()}
    assert kinds["factual"]["answer_in_top"] == 1 and kinds["factual"]["share_answer_in_top"] == 1.0
    assert kinds["arithmetic"]["share_intermediates_in_top"] == 0.0


def test_the_papers_answer_search_reads_every_step_in_one_document_or_across_several():
    a, _ = hand_analysis()
    rows = {r["query_id"]: r for r in a.result(sections.answers.compute).answer_search.to_dicts()}
    # all 8 documents are searched (fewer than 500); "Lima" is in d0 and d4
    assert rows["f"]["searched"] == 8 and rows["f"]["docs_with_answer"] == 2 and rows["f"]["answer_found"]
    assert rows["f"]["steps"] == 1 and rows["f"]["all_steps_in_one_document"] is None
    # r: steps 4, 3 and the answer 12: "4 and 3" (d2), "12" (d1, d6; not "312 and 12.5"), no document holds all three
    assert rows["r"]["docs_with_answer"] == 2 and rows["r"]["expected_by_chance"] == pytest.approx(8 * 2 / 8)
    assert rows["r"]["steps"] == 3 and rows["r"]["steps_found"] == 3
    assert rows["r"]["all_steps_in_one_document"] is False and rows["r"]["all_steps_across_documents"] is True
    kinds = {r["kind"]: r for r in a.result(sections.answers.compute).answer_search_kinds.to_dicts()}
    assert kinds["arithmetic"]["multi_step_queries"] == 1 and kinds["arithmetic"]["all_steps_across_documents"] == 1


def test_magnitude_per_nat_is_total_influence_over_the_completion_information():
    a, scores = hand_analysis()
    m = a.result(sections.magnitude.compute)
    rows = {r["query_id"]: r for r in m.magnitude.to_dicts()}
    positive = np.clip(scores.astype(np.float64), 0, None).sum(axis=1)
    absolute = np.abs(scores.astype(np.float64)).sum(axis=1)
    assert rows["f"]["positive_per_nat"] == pytest.approx(positive[0] / 2.0)
    assert rows["r"]["positive_per_nat"] == pytest.approx(positive[1] / 8.0)
    assert rows["r"]["absolute_per_nat"] == pytest.approx(absolute[1] / 8.0)
    cmp = m.magnitude_comparison.filter(pl.col("measure") == "positive_per_nat").row(0, named=True)
    assert cmp["reasoning_over_factual"] == pytest.approx((positive[1] / 8) / (positive[0] / 2))


def test_influence_per_nat_curves_follow_the_papers_definition_on_both_sides():
    a, _ = hand_analysis()
    curves = a.result(sections.magnitude.compute).magnitude_curves
    got = {(r["kind"], r["side"], r["by"], r["at"]): r["mean_per_nat"] for r in curves.to_dicts()}
    # f (2 nats): positives 9 8 2 1 0.5, negatives -5 -4; r (8 nats): positives 6 3 0.2 0.1, negatives -7 -2 -1 -0.5
    expected = {
        ("factual", "positive", "percentile", 20.0): 9 / 2,  # top ceil(20% of 5) = 1 document
        ("factual", "positive", "percentile", 50.0): 19 / 2,  # ceil(2.5) = 3 documents
        ("factual", "positive", "percentile", 100.0): 20.5 / 2,
        ("factual", "negative", "percentile", 50.0): -5 / 2,
        ("factual", "negative", "percentile", 100.0): -9 / 2,
        ("arithmetic", "positive", "percentile", 25.0): 6 / 8,
        ("arithmetic", "positive", "percentile", 50.0): 9 / 8,
        ("arithmetic", "negative", "percentile", 75.0): -10 / 8,
        ("factual", "positive", "documents", 1.0): 9 / 2,
        ("arithmetic", "negative", "documents", 1.0): -7 / 8,
    }
    for key, value in expected.items():
        assert got[key] == pytest.approx(value), key
    # absolute counts stop at the side's size: f has 2 negative documents, so no top 10
    assert ("factual", "negative", "documents", 10.0) not in got


def test_token_terms_are_shown_as_shaded_text_under_their_query():
    shards, _ = hand_shards()
    stats, top = merge_shards(shards, 2)
    tokens = pa.table(
        {
            "query_id": ["f"],
            "side": ["top"],
            "rank": [1],
            "shard": [""],
            "doc_id": ["d4"],
            "score": [9.0],
            "token_sum": [9.0],
            "tokens": [["Lima", " is", " <here>"]],
            "terms": [[10.0, -1.0, 0.0]],
        },
        schema=TOKEN_SCHEMA,
    )
    a = analyze(
        stats,
        top,
        hand_queries(),
        ReportConfig(k=2, bootstrap=50, permutations=20),
        attribution={"token_influence": tokens},
    )
    page = sections.top_documents.body(a, {})
    f_block, r_block = page.split("<details>")[1:3]
    assert 'rgba(214,39,40,0.65)" title="10">Lima</span>' in f_block  # the largest term, fully shaded red
    assert 'rgba(31,119,180,0.07)" title="-1"> is</span>' in f_block and "&lt;here&gt;" in f_block
    assert "token terms sum to 9" in f_block and "Which tokens carry the score" not in r_block


def test_top_documents_carry_the_query_beside_them():
    a, _ = hand_analysis()
    top = a.result(sections.top_documents.compute).top_documents
    top = top.filter((pl.col("query_id") == "f") & (pl.col("side") == "top"))
    assert top["doc_id"].to_list() == ["d4", "d5"]
    assert top["rank"].to_list() == [1, 2]
    assert set(top["prompt"]) == {"p1"} and set(top["completion"]) == {"c1"}
    assert top["answer_found"].to_list() == [True, False]


def test_two_stage_retrieval_shows_exact_scores_beside_stored_ones_only_when_stored_ones_are_approximate():
    shards, _ = hand_shards()
    stats, top = merge_shards(shards, 2)
    exact = {
        ("f", "top", "d4"): (2.0, 2),
        ("f", "top", "d5"): (3.0, 1),
        ("f", "bottom", "d0"): (-5.0, 1),
        ("f", "bottom", "d1"): (-1.0, 2),
        ("r", "top", "d6"): (6.5, 1),
        ("r", "bottom", "d7"): (-7.5, 1),
    }
    rows = [
        {
            "query_id": r["query_id"],
            "side": r["side"],
            "shard": r["shard"],
            "doc_id": r["doc_id"],
            "stored_rank": r["rank"],
            "stored_score": float(r["score"]),
            "exact_score": exact[key][0],
            "exact_rank": exact[key][1],
        }
        for r in top.to_pylist()
        if (key := (r["query_id"], r["side"], r["doc_id"])) in exact
    ]
    reranked = pa.Table.from_pylist(rows, schema=RERANK_SCHEMA)
    settings = ReportConfig(k=2, bootstrap=50, permutations=20)
    approximate = accuracy_table(
        [
            (
                "",
                {
                    "exact": False,
                    "projection": None,
                    "query_rank": 2,
                    "document_rank": None,
                    "documents": 8,
                    "queries": 2,
                    "pearson_mean": 0.9,
                    "pearson_min": 0.8,
                    "top1_agreement": 1.0,
                },
            )
        ]
    )
    a = analyze(stats, top, hand_queries(), settings, accuracy=approximate, reranked=reranked)
    table = a.result(sections.top_documents.compute).top_documents
    f_top = table.filter((pl.col("query_id") == "f") & (pl.col("side") == "top"))
    assert f_top["doc_id"].to_list() == ["d4", "d5"]  # the stored order stays; exact columns beside it
    assert f_top["exact_score"].to_list() == [2.0, 3.0] and f_top["exact_rank"].to_list() == [2, 1]
    r_top = table.filter((pl.col("query_id") == "r") & (pl.col("side") == "top"))
    assert r_top["exact_score"].to_list() == [6.5, None]  # rerank_k = 1 for r: its second is not re-scored
    page = sections.top_documents.body(a, {})
    assert page.count("<th>exact score (rank)</th>") == 4 and "<td class='exact'>3 (1)</td>" in page
    assert "not re-scored" in page
    notes = sections.notes.body(a, {})
    assert "Two-stage retrieval: each query's top and bottom 2 documents" in notes
    # at 2 candidates the top 1 is compared: f's exact first (d5) was stored second; the other sides agree
    assert "the stored order had 75% of each exact top 1 (of those candidates) in its own top 1" in notes
    one_row = analyze(
        stats,
        top,
        hand_queries(),
        ReportConfig(k=2, bootstrap=50, permutations=20, html_rows=1),
        accuracy=approximate,
        reranked=reranked,
    )
    f_block = sections.top_documents.body(one_row, {}).split("<details>")[1]
    assert "d4" in f_block and "d5" in f_block  # stored first, and exact first though stored second
    exact_already = accuracy_table(
        [("", {"exact": True, "projection": None, "query_rank": None, "document_rank": None})]
    )
    plain = analyze(stats, top, hand_queries(), settings, accuracy=exact_already, reranked=reranked)
    assert "exact score" not in sections.top_documents.body(plain, {})
    assert "Two-stage" not in sections.notes.body(plain, {})
    assert plain.result(sections.top_documents.compute).top_documents["exact_score"].null_count() == 8


# -------------------------------------------------------------------------------- correlation
def test_the_slope_test_is_also_run_on_the_queries_the_model_answers_correctly():
    """Exact power laws of known slope; the model answers some queries correctly. The test on the
    correct ones is Welch's t-test (scipy's, as a direct formula) of exactly their slopes."""
    from scipy.stats import ttest_ind

    betas = {"f1": 0.5, "f2": 0.6, "f3": 0.7, "f4": 0.8, "r1": 0.3, "r2": 0.35, "r3": 0.9, "r4": 0.4}
    correct = {"f1": True, "f2": True, "f3": False, "f4": True, "r1": True, "r2": False, "r3": True, "r4": None}
    ids = list(betas)
    queries = pa.table(
        {
            "id": ids,
            "kind": ["factual"] * 4 + ["arithmetic"] * 4,
            "prompt": ids,
            "completion": ids,
            "answer": ["x" if correct[q] is not None else "" for q in ids],
            "intermediates": [[] for _ in ids],
            "logprob": [-1.0] * 8,
            "source": ["generated", "given"] * 4,
            "model_completion": ids,
            "correct": pa.array([correct[q] for q in ids], pa.bool_()),
        }
    )
    n = 600
    ranks = np.arange(1, n + 1, dtype=np.float64)
    scores = np.stack([ranks ** -betas[q] for q in ids]).astype(np.float32)
    docs = [f"d{i}" for i in range(n)]
    shard = summarize_shard(
        ids, docs, scores, pa.table({"doc_id": docs, "source": ["s"] * n, "text": [""] * n}), queries, k=2
    )
    a = analyze(*merge_shards([shard], 2), queries, ReportConfig(k=2, bootstrap=20, permutations=5))
    tests = {
        r["queries"]: r
        for r in a.result(sections.concentration.compute).power_law_test.filter(pl.col("fit") == "paper").to_dicts()
    }
    for subset, keep in {"all": ids, "answered correctly": [q for q in ids if correct[q]]}.items():
        f = [-betas[q] for q in keep if q.startswith("f")]
        r = [-betas[q] for q in keep if q.startswith("r")]
        expected = ttest_ind(f, r, equal_var=False)
        got = tests[subset]
        assert (got["factual_queries"], got["reasoning_queries"]) == (len(f), len(r))
        assert (got["t"], got["p"]) == pytest.approx((expected.statistic, expected.pvalue), rel=1e-3)
    kinds = {r["kind"]: r for r in a.result(sections.completions.compute).completions_kinds.to_dicts()}
    assert [kinds["factual"][k] for k in ("queries", "generated", "with_answer", "correct")] == [4, 2, 4, 3]
    assert [kinds["arithmetic"][k] for k in ("queries", "generated", "with_answer", "correct")] == [4, 2, 3, 2]
    reading = " ".join(sections.completions.reading(a))
    assert "The model wrote 4 of the 8 completions" in reading and "factual 3 of 4" in reading
    assert "on the queries the model answers correctly (3 factual, 2 reasoning)" in " ".join(
        sections.concentration.reading(a)
    )


def test_group_means_average_the_right_pairs():
    kinds = ["factual", "factual", "slope", "slope", "linear", "control"]
    cats = ["factual", "factual", "reasoning", "reasoning", "reasoning", "control"]
    rng = np.random.default_rng(0)
    r = rng.uniform(-1, 1, (6, 6))
    r = (r + r.T) / 2
    np.fill_diagonal(r, 1)
    groups = pair_groups(kinds, cats)
    gm = group_means(r, groups, kinds, draws=500)
    assert gm.means["within slope"] == pytest.approx(r[2, 3])
    assert gm.means["same reasoning kind"] == pytest.approx(r[2, 3])
    assert gm.means["different reasoning kinds"] == pytest.approx((r[2, 4] + r[3, 4]) / 2)
    assert gm.means["within factual"] == pytest.approx(r[0, 1])
    assert gm.means["reasoning vs factual"] == pytest.approx(r[np.ix_([0, 1], [2, 3, 4])].mean())
    assert gm.means["control vs others"] == pytest.approx(r[5, :5].mean())
    assert gm.pairs["reasoning vs factual"] == 6
    lo, hi = gm.interval("control vs others")
    assert lo <= gm.means["control vs others"] <= hi


def test_control_queries_are_read_among_themselves_and_factual_controls_apart_from_reasoning_ones():
    kinds = [
        "factual",
        "factual",
        "slope",
        "slope",
        "factual_control",
        "factual_control",
        "reasoning_control",
        "reasoning_control",
    ]
    cats = [ReportConfig().category(k) for k in kinds]
    assert cats == ["factual", "factual", "reasoning", "reasoning", "control", "control", "control", "control"]
    rng = np.random.default_rng(1)
    r = rng.uniform(-1, 1, (8, 8))
    r = (r + r.T) / 2
    np.fill_diagonal(r, 1)
    gm = group_means(r, pair_groups(kinds, cats), kinds, draws=200)
    assert gm.means["within factual_control"] == pytest.approx(r[4, 5])
    assert gm.means["within reasoning_control"] == pytest.approx(r[6, 7])
    assert gm.means["factual_control vs factual"] == pytest.approx(r[np.ix_([4, 5], [0, 1])].mean())
    assert gm.means["reasoning_control vs reasoning"] == pytest.approx(r[np.ix_([6, 7], [2, 3])].mean())
    assert gm.pairs["factual_control vs reasoning"] == 4
    assert gm.means["control vs others"] == pytest.approx(r[np.ix_([4, 5, 6, 7], [0, 1, 2, 3])].mean())


def test_permutation_test_separates_structure_from_noise():
    kinds = ["slope"] * 5 + ["linear"] * 5
    cats = ["reasoning"] * 10
    structured = np.full((10, 10), 0.05)
    structured[:5, :5] = structured[5:, 5:] = 0.6
    np.fill_diagonal(structured, 1)
    diff, p = same_kind_permutation_test(structured, kinds, cats, permutations=500)
    assert diff == pytest.approx(0.55) and p < 0.05  # 2 of the C(10,5) = 252 labelings are as extreme
    rng = np.random.default_rng(3)
    noise = rng.uniform(-0.1, 0.1, (10, 10))
    noise = (noise + noise.T) / 2
    _, p = same_kind_permutation_test(noise, kinds, cats, permutations=500)
    assert p > 0.05


def test_wilson_interval():
    lo, hi = wilson(0, 10)
    assert lo == 0 and 0.25 < hi < 0.35
    lo, hi = wilson(5, 10)
    assert lo < 0.5 < hi


# ----------------------------------------------------------------- merge order and incremental
@pytest.fixture(scope="module")
def synthetic():
    queries = synthetic_queries(15, seed=1)
    ids = queries.column("id").to_pylist()
    shards = []
    for s in range(4):
        doc_ids, scores, docs = synthetic_shard(queries, 600, s, seed=1)
        shards.append((doc_ids, scores, docs))
    return queries, ids, shards


@pytest.fixture(scope="module")
def parts(synthetic):
    """The four shards' summaries, computed once: merging and analysing never modify them."""
    queries, ids, shards = synthetic
    return [
        summarize_shard(ids, doc_ids, scores, docs, queries, k=FAST.k, exact_top=200)
        for doc_ids, scores, docs in shards
    ]


def assert_same_tables(a, b):
    ta, tb = sections.tables(a), sections.tables(b)
    assert ta.keys() == tb.keys()
    for name in ta:
        assert_frame_equal(ta[name], tb[name], check_exact=False, rel_tol=1e-9, abs_tol=1e-12), name


def test_report_does_not_depend_on_shard_order_and_a_new_shard_updates_it_as_a_rescan_would(synthetic, parts):
    queries, ids, shards = synthetic
    forward = analyze(*merge_shards(parts, FAST.k), queries, FAST)
    backward = analyze(*merge_shards(parts[::-1], FAST.k), queries, FAST)
    assert_same_tables(forward, backward)
    # incremental: the report of shards 0-2, then shard 3 merged into that state
    stats, top = merge_shards(parts[:3], FAST.k)
    before = analyze(stats, top, queries, FAST)
    stats, top = merge_shards([(stats, top), parts[3]], FAST.k)
    assert_same_tables(analyze(stats, top, queries, FAST), forward)
    # and from scratch: all documents as one shard
    doc_ids = sum((s[0] for s in shards), [])
    scores = np.concatenate([s[1] for s in shards], axis=1)
    docs = pa.concat_tables([s[2] for s in shards])
    whole = summarize_shard(ids, doc_ids, scores, docs, queries, k=FAST.k, exact_top=200)
    assert_same_tables(analyze(*merge_shards([whole], FAST.k), queries, FAST), forward)
    assert forward.n_documents == 2400 and before.n_documents == 1800
    groups = [x.result(sections.correlation.compute).correlation_groups for x in (before, forward)]
    assert not groups[0].equals(groups[1])  # the new shard did change it


def test_synthetic_structure_is_recovered_and_read_out(synthetic, parts):
    queries, _, _ = synthetic
    a = analyze(*merge_shards(parts, FAST.k), queries, FAST)
    g = {r["group"]: r for r in a.result(sections.correlation.compute).correlation_groups.to_dicts()}
    assert g["same reasoning kind"]["mean_r"] > g["different reasoning kinds"]["mean_r"] + 0.3
    assert g["same reasoning kind"]["mean_r"] > g["within factual"]["mean_r"] + 0.3
    kinds = {r["kind"]: r for r in a.result(sections.answers.compute).answers_kinds.to_dicts()}
    assert kinds["factual"]["share_answer_in_top"] == 1.0  # planted into the top documents
    text = sections.readings(a)
    assert text["correlation"][0].startswith("Reasoning queries of the same kind correlate more")
    assert "less total positive influence" in text["magnitude"][0]
    assert POOLED in a.result(sections.magnitude.compute).magnitude_kinds["kind"].to_list()


def test_readings_hedge_when_intervals_overlap():
    rng = np.random.default_rng(5)
    q, n = 8, 2000
    kinds = ["factual", "factual", "factual", "factual", "slope", "slope", "slope", "slope"]
    queries = pa.table(
        {
            "id": [f"q{i}" for i in range(q)],
            "kind": kinds,
            "prompt": [""] * q,
            "completion": [""] * q,
            "answer": [None] * q,
            "intermediates": [[]] * q,
            "logprob": [-1.0, -4.0, -2.0, -3.0, -3.0, -1.0, -4.0, -2.0],
        }
    )
    scores = rng.standard_normal((q, n)).astype(np.float32)  # no structure at all
    parts = summarize_shard(queries["id"].to_pylist(), [f"d{i}" for i in range(n)], scores, None, queries, k=5)
    a = analyze(*merge_shards([parts], 5), queries, ReportConfig(k=5, bootstrap=300, permutations=50))
    text = sections.readings(a)
    assert "cannot be told apart" in text["correlation"][0]
    assert "about as much" in text["magnitude"][0]
    assert "No query has an answer" in text["answers"][0]


# ------------------------------------------------------------------------------ files, asset
def write_shards(store: Storage, queries: pa.Table) -> list[ShardFiles]:
    """The `synthetic` fixture's shards, stored as s0..s3 (a test matches an error on the name)."""
    return write_synthetic_shards(store, queries, 600, range(4), k=FAST.k, seed=1, exact_top=200, name="s{}")


def test_build_report_writes_html_parquet_and_figures(tmp_path, synthetic):
    queries = synthetic[0]
    store = Storage(str(tmp_path))
    files = write_shards(store, queries)
    report, keys = build_report(store, files, queries, FAST)
    assert "influence_report/report.html" in keys
    html = store.read_bytes("influence_report/report.html").decode()
    for sid, _ in sections.CONTENTS:
        assert f'<section id="{sid}">' in html
    assert html.count("data:image/png;base64,") == len(report.figures) == 8
    assert "<script" not in html and "http://" not in html and "https://" not in html
    top = store.read_parquet("influence_report/top_documents.parquet")
    assert top.num_rows == 15 * 2 * FAST.k
    assert store.read_bytes("influence_report/figures/correlation_matrix.png")[:8] == b"\x89PNG\r\n\x1a\n"
    md = report.markdown_tables()
    assert md["correlation"].startswith("| group |") and "same reasoning kind" in md["correlation"]
    headline = report.headline_tables()
    assert list(md) == [*headline, "readings"]
    assert all(md[name] == markdown_table(df) for name, df in headline.items())
    assert headline["correlation"].columns == ["group", "pairs", "mean_r", "ci_low", "ci_high"]
    outputs = report.outputs()
    assert [f"influence_report/{name}" for name in outputs] == keys
    assert outputs["report.html"] == store.read_bytes("influence_report/report.html")
    assert outputs["figures/sources.png"] == report.figures["sources"]
    stored = pl.from_arrow(store.read_parquet("influence_report/sources.parquet"))
    assert_frame_equal(outputs["sources.parquet"], stored)
    assert {figure_file(name) for name in report.figures} <= set(outputs)  # every plot is a file of the report
    # reading the stored statistics gives the same report as merging in memory
    again = analyze(*merge_stored(store, files, FAST.k), queries, FAST)
    assert_same_tables(again, report.analysis)


def test_merge_stored_names_a_shard_scored_with_other_queries(tmp_path, synthetic):
    queries, ids, shards = synthetic
    store = Storage(str(tmp_path))
    files = write_shards(store, queries)
    stats, top = summarize_shard(ids[:3], shards[0][0], shards[0][1][:3], shards[0][2], queries, k=3)
    store.write_tensors(files[2].statistics, *stats.to_tensors())
    with pytest.raises(Exception, match="s2"):
        merge_stored(store, files, 3)


def test_error_bars_of_a_degenerate_interval_are_zero_not_negative():
    from pretrace.report.plots import error_bars

    mean = np.array([0.1 + 0.2, 1.0, 2.0])
    bars = error_bars(mean, [0.3, np.nan, 1.5], [0.3, 2.0, np.nan])  # 0.1 + 0.2 is a hair above 0.3
    assert (bars >= 0).all() and bars.shape == (2, 3)
    assert bars[1, 0] == 0.0  # 0.3 - (0.1 + 0.2) < 0 would be refused by matplotlib
    assert bars[:, 1:].tolist() == [[0.0, 0.5], [1.0, 0.0]]


def test_a_kind_that_looks_like_mathtext_is_drawn_as_written(synthetic, parts):
    """Query kinds are the user's text: `$...$` in one (here unparsable as mathtext) is a label."""
    queries, _, _ = synthetic
    kinds = [f"{kind} $x^$" if kind != "factual" else kind for kind in queries.column("kind").to_pylist()]
    renamed = queries.set_column(queries.schema.get_field_index("kind"), "kind", pa.array(kinds))
    figures = sections.render_figures(analyze(*merge_shards(parts, FAST.k), renamed, FAST))
    assert figures and all(png.startswith(b"\x89PNG") for png in figures.values())
