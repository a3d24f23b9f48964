"""Factored gradients: the truncated SVD is the best rank-r approximation, and scores computed
from factors equal scores against the reconstructed matrices."""

import numpy as np
import pytest
import torch

import pretrace.influence.low_rank as low_rank
from pretrace.influence.document_gradients import DocumentGradients, compute_document_gradients
from pretrace.influence.low_rank import factorize, inner_products
from pretrace.influence.projection import KroneckerProjection
from pretrace.influence.query_gradients import QueryGradients, compute_query_gradients
from pretrace.influence.scores import score_matrix, stream_scores
from pretrace.inputs.query_file import Query
from pretrace.testing.tiny import fitted_tiny_llama, random_sequences

QUERIES = [Query("capital", "The capital of France is", " Paris."), Query("arith", "(7 - 4) * 8 =", " 24")]


def test_factors_are_the_best_approximation_of_their_rank():
    X = torch.randn(5, 9, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    L, R = factorize(X, 3)
    assert L.shape == (5, 9, 3) and R.shape == (5, 7, 3)
    for x, approx in zip(X.numpy(), (L @ R.transpose(1, 2)).numpy()):
        singular = np.linalg.svd(x, compute_uv=False)
        # Eckart-Young: the error of the best rank-3 matrix is the norm of the other singular values
        assert np.linalg.norm(x - approx) == pytest.approx(np.sqrt((singular[3:] ** 2).sum()), rel=1e-9)
    L, R = factorize(X, 50)  # a rank above the matrix's keeps it whole
    torch.testing.assert_close(L @ R.transpose(1, 2), X)


@pytest.mark.parametrize("query_rank", [None, 2])
def test_inner_products_from_factors_equal_those_of_the_reconstructed_matrices(query_rank, monkeypatch):
    g = torch.Generator().manual_seed(1)
    L, R = torch.randn(11, 6, 3, generator=g), torch.randn(11, 5, 3, generator=g)
    dense_documents = L @ R.transpose(1, 2)
    if query_rank is None:
        query = (torch.randn(4, 6, 5, generator=g), None)
        dense_queries = query[0]
    else:
        query = (torch.randn(4, 6, query_rank, generator=g), torch.randn(4, 5, query_rank, generator=g))
        dense_queries = query[0] @ query[1].transpose(1, 2)
    expected = dense_queries.flatten(1) @ dense_documents.flatten(1).T
    torch.testing.assert_close(inner_products(query, (L, R)), expected, rtol=1e-5, atol=1e-5)
    monkeypatch.setattr(low_rank, "CHUNK_NUMBERS", 50)  # many chunks of documents: the same result
    torch.testing.assert_close(inner_products(query, (L, R)), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("query_rank", [None, 2])
def test_factored_document_gradients_score_like_their_reconstruction(query_rank):
    docs = random_sequences(14, min_len=6, max_len=20, seed=9)
    lm, factors = fitted_tiny_llama(2, docs)
    projection = KroneckerProjection.build(lm.layer_shapes(), 8, 8, seed=0, basis="whitened", factors=factors)
    ids = [str(i) for i in range(len(docs))]
    queries = compute_query_gradients(lm, factors, QUERIES, projection=projection, rank=query_rank)
    factored = compute_document_gradients(lm, docs, ids, projection=projection, rank=2, batch_size=5)
    assert factored.rank == 2 and all(v.shape == (len(docs), 8, 2) for v in factored.grads.values())
    restored = DocumentGradients.from_tensors(*factored.to_tensors())  # the stored form round-trips
    reconstructed = DocumentGradients(
        ids, {k: restored.dense(k) for k in restored.grads}, restored.losses, restored.projection
    )
    expected = score_matrix(queries, reconstructed)
    torch.testing.assert_close(
        score_matrix(queries, restored), expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max())
    )
    # and rank 2 is an approximation of the full projected gradients, not a copy of them
    full = score_matrix(queries, compute_document_gradients(lm, docs, ids, projection=projection))
    assert not torch.allclose(full, expected, rtol=1e-3)


def test_per_token_inner_products_equal_those_with_the_summed_gradient(monkeypatch):
    g_ = torch.Generator().manual_seed(3)
    A, B = torch.randn(5, 6, 3, generator=g_), torch.randn(5, 4, 3, generator=g_)
    a, g = torch.randn(2, 7, 4, generator=g_), torch.randn(2, 7, 6, generator=g_)
    documents = torch.bmm(g.transpose(1, 2), a)  # (2, 6, 4): sum over tokens of g a^T
    expected = (A @ B.transpose(1, 2)).flatten(1) @ documents.flatten(1).T
    torch.testing.assert_close(low_rank.captured_inner_products((A, B), a, g), expected, rtol=1e-5, atol=1e-5)
    monkeypatch.setattr(low_rank, "CHUNK_NUMBERS", 50)  # a few queries a chunk: the same result
    torch.testing.assert_close(low_rank.captured_inner_products((A, B), a, g), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("projected", [False, True])
def test_streamed_scores_of_factored_queries_equal_those_of_their_reconstruction(projected):
    docs = random_sequences(9, min_len=6, max_len=20, seed=4)
    lm, factors = fitted_tiny_llama(2, docs)
    projection = (
        KroneckerProjection.build(lm.layer_shapes(), 8, 8, seed=0, basis="whitened", factors=factors)
        if projected
        else None
    )
    factored = compute_query_gradients(lm, factors, QUERIES, projection=projection, rank=2)
    dense = QueryGradients(
        factored.ids, factored.logprobs, {k: factored.dense(k) for k in factored.layers}, {}, factored.projection, None
    )
    expected = stream_scores(lm, dense, docs, projection=projection, batch_size=4)
    torch.testing.assert_close(
        stream_scores(lm, factored, docs, projection=projection, batch_size=4),
        expected,
        rtol=1e-4,
        atol=1e-5 * float(expected.abs().max()),
    )
