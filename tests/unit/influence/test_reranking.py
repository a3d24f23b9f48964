"""Two-stage retrieval: candidates from stored scores, exact scores for the candidates only."""

import pyarrow as pa
import pytest
import torch

from pretrace.analyses.top_documents import merge_top_documents, top_documents
from pretrace.influence.document_gradients import compute_document_gradients
from pretrace.influence.projection import KroneckerProjection
from pretrace.influence.query_gradients import compute_query_gradients
from pretrace.influence.reranking import (
    RERANK_SCHEMA,
    agreement_k,
    already_exact,
    candidates,
    candidates_of,
    order_agreement,
    recall,
    rerank,
    rerank_passes,
)
from pretrace.influence.scores import exact_scores, query_chunks, score_matrix, stream_scores
from pretrace.inputs.query_file import Query
from pretrace.testing.tiny import fitted_tiny_llama, random_sequences

QUERIES = [
    Query("capital", "The capital of France is", " Paris."),
    Query("arith", "(7 - 4) * 8 =", " 24"),
    Query("code", "def add(a, b):", "\n    return a + b\n"),
]


@pytest.fixture(scope="module")
def setup():
    docs = random_sequences(20, min_len=6, max_len=18, seed=4)
    lm, factors = fitted_tiny_llama(3, docs)
    projection = KroneckerProjection.build(lm.layer_shapes(), 2, 2, seed=0, basis="whitened", factors=factors)
    ids = [f"d{i}" for i in range(len(docs))]
    stored = score_matrix(
        compute_query_gradients(lm, factors, QUERIES, projection=projection),
        compute_document_gradients(lm, docs, ids, projection=projection),
    )
    exact = stream_scores(lm, compute_query_gradients(lm, factors, QUERIES), docs)
    return lm, factors, docs, ids, stored, exact


def reranked(setup, k: int) -> pa.Table:
    lm, factors, docs, ids, stored, _ = setup
    chosen = candidates_of(top_documents([q.id for q in QUERIES], ids, stored, k, shard="s"))
    position = {doc_id: i for i, doc_id in enumerate(ids)}
    return rerank(lm, factors, QUERIES, chosen, lambda shard, doc: docs[position[doc]], batch_size=3)


def side(table: list[dict], query_id: str, name: str) -> list[dict]:
    return sorted((r for r in table if r["query_id"] == query_id and r["side"] == name), key=lambda r: r["exact_rank"])


def test_with_every_document_a_candidate_two_stage_retrieval_is_exact_scoring(setup):
    _, _, docs, ids, stored, exact = setup
    table = reranked(setup, len(docs)).to_pylist()
    assert len(table) == 2 * len(QUERIES) * len(docs)
    for i, q in enumerate(QUERIES):
        for name, descending in (("top", True), ("bottom", False)):
            rows = side(table, q.id, name)
            expected = torch.sort(exact[i].double(), descending=descending, stable=True)
            assert [r["doc_id"] for r in rows] == [ids[j] for j in expected.indices.tolist()]
            torch.testing.assert_close(
                torch.tensor([r["exact_score"] for r in rows], dtype=torch.float64),
                expected.values,
                rtol=1e-4,
                atol=1e-6 * float(exact.abs().max()),
            )
    assert recall(stored, exact, len(docs), 5) == 1.0


def test_a_few_candidates_are_reordered_exactly_and_only_they_are_scored(setup):
    _, _, _, ids, stored, exact = setup
    table = reranked(setup, 4).to_pylist()
    assert len(table) == 2 * 4 * len(QUERIES)
    for i, q in enumerate(QUERIES):
        rows = side(table, q.id, "top")
        assert {r["doc_id"] for r in rows} == {ids[j] for j in candidates(stored, 4)[i].tolist()}
        assert {r["doc_id"] for r in side(table, q.id, "bottom")} == {
            ids[j] for j in candidates(-stored, 4)[i].tolist()
        }
        assert [r["exact_score"] for r in rows] == sorted((r["exact_score"] for r in rows), reverse=True)
        for r in table:
            if r["query_id"] != q.id:
                continue
            assert r["exact_score"] == pytest.approx(float(exact[i, ids.index(r["doc_id"])]), rel=1e-4, abs=1e-7)
    # a projection to 2 x 2 misses some of the exact top 3 among 4 candidates, and never all
    assert 0 < recall(stored, exact, 4, 3) < 1


def test_exact_stored_scores_keep_their_order_and_ties_keep_the_stored_rank():
    stored = torch.tensor([[3.0, 1.0, 3.0, -2.0], [0.0, 0.0, 5.0, 1.0]])
    chosen = candidates_of(top_documents(["q1", "q0"], ["a", "b", "c", "d"], stored, 2, shard="s"))
    rows = already_exact(chosen, ["q1", "q0"]).to_pylist()
    assert [(r["query_id"], r["side"], r["doc_id"], r["exact_rank"]) for r in rows] == [
        ("q1", "top", "a", 1),
        ("q1", "top", "c", 2),
        ("q1", "bottom", "d", 1),
        ("q1", "bottom", "b", 2),
        ("q0", "top", "c", 1),
        ("q0", "top", "d", 2),
        ("q0", "bottom", "a", 1),
        ("q0", "bottom", "b", 2),
    ]
    assert all(r["exact_rank"] == r["stored_rank"] and r["exact_score"] == r["stored_score"] for r in rows)


def test_order_agreement_counts_the_exact_top_k_the_stored_order_had_too():
    rows = [
        {
            "query_id": "q",
            "side": "top",
            "shard": "s",
            "doc_id": d,
            "stored_rank": stored,
            "stored_score": 0.0,
            "exact_rank": exact,
            "exact_score": 0.0,
        }
        for d, stored, exact in (("a", 1, 3), ("b", 2, 1), ("c", 3, 2))
    ]
    rows += [{**r, "side": "bottom", "exact_rank": r["stored_rank"]} for r in rows]
    table = pa.Table.from_pylist(rows, schema=RERANK_SCHEMA)
    assert order_agreement(table, 2) == pytest.approx((1 / 2 + 1) / 2)  # top: b kept, c new; bottom: unchanged
    assert order_agreement(table, 3) == 1.0
    assert order_agreement(RERANK_SCHEMA.empty_table()) is None
    assert [agreement_k(k) for k in (1, 5, 19, 20, 100)] == [1, 2, 9, 10, 10]


def test_queries_beyond_the_memory_budget_take_further_passes_over_only_their_own_candidates(setup):
    lm, factors, docs, ids, stored, exact = setup
    one_query = sum(o * i for o, i in lm.layer_shapes().values()) * 4  # float32 bytes of one dense query gradient
    assert query_chunks(lm, 5, 2 * one_query) == [range(0, 2), range(2, 4), range(4, 5)]
    assert query_chunks(lm, 2, one_query // 3) == [range(0, 1), range(1, 2)]  # never fewer than one
    chunked = exact_scores(lm, factors, QUERIES, docs, batch_size=3, budget=one_query)
    torch.testing.assert_close(chunked, exact, rtol=1e-4, atol=1e-6 * float(exact.abs().max()))
    chosen = candidates_of(top_documents([q.id for q in QUERIES], ids, stored, 4, shard="s"))
    position = {doc_id: i for i, doc_id in enumerate(ids)}
    streamed: list[int] = []
    one_by_one = rerank(
        lm,
        factors,
        QUERIES,
        chosen,
        lambda shard, doc: docs[position[doc]],
        batch_size=3,
        budget=one_query,
        progress=streamed.append,
    )
    # each query streams its own 8 candidates (4 per side, all distinct here) and nothing else
    assert sum(streamed) == rerank_passes(lm, QUERIES, chosen, one_query) == len(chosen)
    together = reranked(setup, 4)
    assert one_by_one.column("exact_rank").to_pylist() == together.column("exact_rank").to_pylist()
    torch.testing.assert_close(
        torch.tensor(one_by_one.column("exact_score").to_pylist()),
        torch.tensor(together.column("exact_score").to_pylist()),
        rtol=1e-4,
        atol=1e-7,
    )


def test_rerank_k_zero_chooses_no_candidate():
    top = top_documents(["q"], ["a", "b"], torch.tensor([[1.0, 2.0]]), 1, shard="s")
    assert merge_top_documents([top], 1).num_rows == 2
    assert already_exact(candidates_of(merge_top_documents([top], 0)), ["q"]).num_rows == 0
