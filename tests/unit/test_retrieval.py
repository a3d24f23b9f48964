"""Two-stage retrieval: candidates from stored scores, exact scores for the candidates only."""

import pyarrow as pa
import pytest
import torch

from pretrace.documents import compute_document_gradients
from pretrace.projection import KroneckerProjection
from pretrace.queries import Query, compute_query_gradients, encode_queries
from pretrace.retrieval import candidates, recall, rerank
from pretrace.scores import score_matrix, stream_scores
from tests.tiny import fitted_tiny_llama, random_sequences

QUERIES = [Query("capital", "The capital of France is", " Paris."), Query("arith", "(7 - 4) * 8 =", " 24"),
           Query("code", "def add(a, b):", "\n    return a + b\n")]


@pytest.fixture(scope="module")
def setup():
    docs = random_sequences(20, min_len=6, max_len=18, seed=4)
    lm, factors = fitted_tiny_llama(3, docs)
    projection = KroneckerProjection.build(lm.layer_shapes(), 2, 2, seed=0, basis="whitened", factors=factors)
    ids = [f"d{i}" for i in range(len(docs))]
    stored = score_matrix(compute_query_gradients(lm, factors, QUERIES, projection=projection),
                          compute_document_gradients(lm, docs, ids, projection=projection))
    exact = stream_scores(lm, compute_query_gradients(lm, factors, QUERIES), docs)
    return lm, factors, docs, ids, stored, exact


def chosen_table(stored: torch.Tensor, ids: list[str], k: int) -> pa.Table:
    rows = [{"query_id": q.id, "shard": "s", "doc_id": ids[j], "stored_rank": rank + 1, "stored_score": float(stored[i, j])}
            for i, q in enumerate(QUERIES) for rank, j in enumerate(candidates(stored, k)[i].tolist())]
    return pa.Table.from_pylist(rows)


def reranked(setup, k: int) -> pa.Table:
    lm, factors, docs, ids, stored, _ = setup
    sequences, starts = encode_queries(QUERIES, lm.tokenizer)
    position = {doc_id: i for i, doc_id in enumerate(ids)}
    return rerank(lm, factors, (sequences, starts, [q.id for q in QUERIES]), chosen_table(stored, ids, k),
                  lambda shard, doc: docs[position[doc]], batch_size=3)


def test_with_every_document_a_candidate_two_stage_retrieval_is_exact_scoring(setup):
    _, _, docs, ids, stored, exact = setup
    table = reranked(setup, len(docs)).to_pylist()
    assert len(table) == len(QUERIES) * len(docs)
    for i, q in enumerate(QUERIES):
        rows = sorted((r for r in table if r["query_id"] == q.id), key=lambda r: r["exact_rank"])
        expected = torch.sort(exact[i].double(), descending=True, stable=True)
        assert [r["doc_id"] for r in rows] == [ids[j] for j in expected.indices.tolist()]
        torch.testing.assert_close(torch.tensor([r["exact_score"] for r in rows], dtype=torch.float64), expected.values,
                                   rtol=1e-4, atol=1e-6 * float(exact.abs().max()))
    assert recall(stored, exact, len(docs), 5) == 1.0


def test_a_few_candidates_are_reordered_exactly_and_only_they_are_scored(setup):
    _, _, _, ids, stored, exact = setup
    table = reranked(setup, 4).to_pylist()
    assert len(table) == 4 * len(QUERIES)
    for i, q in enumerate(QUERIES):
        rows = [r for r in table if r["query_id"] == q.id]
        assert {r["doc_id"] for r in rows} == {ids[j] for j in candidates(stored, 4)[i].tolist()}
        ordered = sorted(rows, key=lambda r: r["exact_rank"])
        assert [r["exact_score"] for r in ordered] == sorted((r["exact_score"] for r in rows), reverse=True)
        for r in rows:
            assert r["exact_score"] == pytest.approx(float(exact[i, ids.index(r["doc_id"])]), rel=1e-4, abs=1e-7)
    # a projection to 2 x 2 misses some of the exact top 3 among 4 candidates, and never all
    assert 0 < recall(stored, exact, 4, 3) < 1
