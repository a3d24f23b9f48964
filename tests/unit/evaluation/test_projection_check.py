"""The projection check: stored scores against exact ones on a seeded sample of documents."""

import numpy as np
import pytest

from pretrace.evaluation.projection_check import projection_error, sample_documents
from pretrace.influence.document_gradients import compute_document_gradients
from pretrace.influence.projection import KroneckerProjection
from pretrace.influence.query_gradients import compute_query_gradients
from pretrace.influence.scores import score_matrix
from pretrace.inputs.query_file import Query
from pretrace.testing.tiny import fitted_tiny_llama, random_sequences

QUERIES = [
    Query("capital", "The capital of France is", " Paris."),
    Query("arith", "(7 - 4) * 8 =", " 24"),
    Query("code", "def add(a, b):", "\n    return a + b\n"),
]


@pytest.fixture(scope="module")
def setup():
    docs = random_sequences(30, min_len=8, max_len=30, seed=7)
    lm, factors = fitted_tiny_llama(6, docs)
    return lm, docs, factors


def stored_scores(lm, docs, factors, k):
    proj = None if k is None else KroneckerProjection.build(lm.layer_shapes(), k, k, seed=1)
    queries = compute_query_gradients(lm, factors, QUERIES, projection=proj)
    return score_matrix(
        queries, compute_document_gradients(lm, docs, list(map(str, range(len(docs)))), projection=proj)
    ).numpy()


def test_the_sample_is_seeded_by_seed_and_shard():
    assert sample_documents(100, 0, "a.jsonl") == sample_documents(100, 0, "a.jsonl")
    assert sample_documents(100, 0, "a.jsonl") != sample_documents(100, 0, "b.jsonl")
    assert sample_documents(5, 0, "a.jsonl") == [0, 1, 2, 3, 4]
    assert len(sample_documents(100, 3, "a.jsonl")) == 16


def test_exact_scores_agree_perfectly_and_a_one_by_one_projection_does_not(setup):
    lm, docs, factors = setup
    sample = sample_documents(len(docs), 0, "s")
    tokens = [docs[i] for i in sample]
    exact = projection_error(lm, factors, QUERIES, tokens, stored_scores(lm, docs, factors, None)[:, sample])
    assert exact.pearson_min == pytest.approx(1.0, abs=1e-5) and exact.top1_agreement == 1.0
    assert (exact.documents, exact.queries) == (16, 3)
    tiny = projection_error(lm, factors, QUERIES, tokens, stored_scores(lm, docs, factors, 1)[:, sample])
    assert tiny.pearson_mean < 0.9 and np.isfinite(tiny.pearson_min)
    # the measured Pearson is the one of the stored and exact matrices, query by query
    stored, exact = stored_scores(lm, docs, factors, 1)[:, sample], stored_scores(lm, docs, factors, None)[:, sample]
    direct = np.mean([np.corrcoef(a, b)[0, 1] for a, b in zip(stored, exact)])
    assert tiny.pearson_mean == pytest.approx(direct, abs=1e-4)
