"""Token-level influence: the per-token terms of each shown document sum to its score."""

import numpy as np
import pytest

from pretrace.influence.document_gradients import compute_document_gradients
from pretrace.influence.projection import KroneckerProjection
from pretrace.influence.query_gradients import compute_query_gradients
from pretrace.influence.scores import score_matrix
from pretrace.influence.token_influence import Pair, token_contributions
from pretrace.inputs.query_file import Query
from pretrace.testing.tiny import fitted_tiny_llama, random_sequences

QUERIES = [Query("capital", "The capital of France is", " Paris."), Query("arith", "(7 - 4) * 8 =", " 24")]


@pytest.fixture(scope="module")
def setup():
    docs = random_sequences(12, min_len=6, max_len=30, seed=5)
    lm, factors = fitted_tiny_llama(4, docs, batch_size=4, double=True)
    return lm, docs, factors


@pytest.mark.parametrize("k,basis", [(None, None), (6, "raw"), (6, "whitened")])
def test_token_terms_sum_to_the_documents_score(setup, k, basis):
    lm, docs, factors = setup
    proj = (
        None if k is None else KroneckerProjection.build(lm.layer_shapes(), k, k, seed=2, basis=basis, factors=factors)
    )
    queries = compute_query_gradients(lm, factors, QUERIES, projection=proj)
    scores = score_matrix(queries, compute_document_gradients(lm, docs, list(map(str, range(12))), projection=proj))
    pairs = [Pair(q, tuple(docs[d])) for q in range(2) for d in (0, 3, 7, 11)] + [Pair(1, tuple(docs[3]))]
    terms = token_contributions(lm, queries, pairs, projection=proj, batch_size=3)
    for pair, values in zip(pairs, terms):
        d = next(i for i, doc in enumerate(docs) if tuple(doc) == pair.tokens)
        assert values.shape == (len(docs[d]),)
        assert values.sum() == pytest.approx(float(scores[pair.query, d]), rel=1e-6, abs=1e-9)
    assert np.array_equal(terms[5], terms[-1])  # the same pair asked twice: the same terms
    # the last position predicts nothing: its g is 0, so its term is 0
    assert all(abs(values[-1]) < 1e-12 for values in terms)
