"""Two models' scores compared shard by shard equal the same measures on the whole matrices."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pretrace.analyses.model_comparison import compare_models
from pretrace.errors import InputError

QUERIES = ["q0", "q1", "q2"]


def score_table(query_ids, doc_ids, scores) -> pa.Table:
    """A stored scores table, rows in a shuffled order (as nothing promises an order)."""
    rows = [(q, d, float(scores[i, j])) for i, q in enumerate(query_ids) for j, d in enumerate(doc_ids)]
    rows = [rows[i] for i in np.random.default_rng(1).permutation(len(rows))]
    return pa.table({"query_id": [r[0] for r in rows], "doc_id": [r[1] for r in rows], "score": [r[2] for r in rows]})


def test_the_comparison_streamed_over_shards_equals_the_whole_matrices():
    rng = np.random.default_rng(0)
    n, k = 90, 7
    this = rng.standard_normal((3, n))
    other = 0.5 * this + rng.standard_normal((3, n))  # correlated, and about half as strong
    other[2] = -3.0 * this[2]  # one query where the compared model is reversed and stronger
    docs = [f"d{j:03d}" for j in range(n)]
    cuts = [(0, 30), (30, 31), (31, n)]  # a one-document shard too
    shards = [
        (
            f"s{i}",
            score_table(QUERIES, docs[a:b], this[:, a:b]),
            {"small": score_table(QUERIES, docs[a:b], other[:, a:b])},
        )
        for i, (a, b) in enumerate(cuts)
    ]
    got = {r["query_id"]: r for r in compare_models(QUERIES, shards, k).to_pylist()}
    for q, query in enumerate(QUERIES):
        row = got[query]
        assert row["model"] == "small" and row["documents"] == n and row["k"] == k
        assert row["pearson"] == pytest.approx(np.corrcoef(this[q], other[q])[0, 1], abs=1e-12)
        top_a, top_b = np.argsort(-this[q])[:k], np.argsort(-other[q])[:k]
        bottom_a, bottom_b = np.argsort(this[q])[:k], np.argsort(other[q])[:k]
        assert row["top_overlap"] == len(set(top_a) & set(top_b))
        assert row["bottom_overlap"] == len(set(bottom_a) & set(bottom_b))
        assert row["top_multiplier"] == pytest.approx(other[q][top_b].mean() / this[q][top_a].mean())
        assert row["bottom_multiplier"] == pytest.approx(other[q][bottom_b].mean() / this[q][bottom_a].mean())
    assert got["q2"]["pearson"] == pytest.approx(-1.0) and got["q2"]["top_overlap"] == 0
    assert got["q2"]["top_multiplier"] == pytest.approx(
        3.0 * -this[2][np.argsort(this[2])[:k]].mean() / this[2][np.argsort(-this[2])[:k]].mean()
    )


def test_the_same_document_id_in_two_shards_counts_as_two_documents():
    same = np.array([[3.0, 1.0]] * 3)
    shards = [
        (s, score_table(QUERIES, ["x", "y"], same), {"twin": score_table(QUERIES, ["x", "y"], same)})
        for s in ("a", "b")
    ]
    row = compare_models(QUERIES, shards, 4).to_pylist()[0]
    assert (row["documents"], row["top_overlap"], row["pearson"], row["top_multiplier"]) == (4, 4, 1.0, 1.0)


def test_a_compared_model_scored_on_other_documents_or_queries_is_named():
    scores = np.ones((3, 2))
    other_docs = [("a", score_table(QUERIES, ["x", "y"], scores), {"small": score_table(QUERIES, ["x", "z"], scores)})]
    with pytest.raises(InputError, match=r"small/influence_scores\[a\] scores other documents"):
        compare_models(QUERIES, other_docs, 2)
    other_queries = [
        ("a", score_table(QUERIES, ["x", "y"], scores), {"small": score_table(["q0", "q1", "new"], ["x", "y"], scores)})
    ]
    with pytest.raises(InputError, match=r"small/influence_scores\[a\]: its scores do not cover the shared queries"):
        compare_models(QUERIES, other_queries, 2)
