"""Scores: stored vs streamed, the sign by finite differences, projection accuracy."""

import pytest
import torch

from pretrace.analyses.correlation import pearson
from pretrace.errors import InputError, NumericalError
from pretrace.influence.blocked_products import blocked_inner_products
from pretrace.influence.document_gradients import compute_document_gradients
from pretrace.influence.ekfac import fit_factors
from pretrace.influence.projection import KroneckerProjection
from pretrace.influence.query_gradients import compute_query_gradients
from pretrace.influence.scores import score_matrix, stream_scores
from pretrace.inputs.batching import batches
from pretrace.inputs.query_file import Query, encode_queries
from pretrace.model.adapter import wrap_model
from pretrace.testing.tiny import fitted_tiny_llama, random_sequences, sentence_documents, tiny_model, tiny_tokenizer

QUERIES = [
    Query("capital", "The capital of France is", " Paris."),
    Query("slope", "The slope between (1, 2) and (3, 8) is", " (8 - 2) / (3 - 1) = 3."),
    Query("arith", "(7 - 4) * 8 =", " 3 * 8 = 24"),
    Query("code", "def add(a, b):", "\n    return a + b\n"),
]


@pytest.fixture(scope="module")
def setup():
    docs = random_sequences(40, min_len=8, max_len=40, seed=11)
    lm, factors = fitted_tiny_llama(1, docs)
    return lm, docs, factors


@pytest.mark.parametrize("k,basis", [(None, None), (8, "raw"), (8, "whitened")])
def test_stored_and_streamed_scores_agree(setup, k, basis):
    lm, docs, factors = setup
    proj = (
        None if k is None else KroneckerProjection.build(lm.layer_shapes(), k, k, seed=5, basis=basis, factors=factors)
    )
    qg = compute_query_gradients(lm, factors, QUERIES, projection=proj)
    stored = score_matrix(
        qg, compute_document_gradients(lm, docs, [str(i) for i in range(len(docs))], projection=proj, batch_size=6)
    )
    streamed = stream_scores(lm, qg, docs, projection=proj, batch_size=7)
    assert stored.shape == (len(QUERIES), len(docs))
    torch.testing.assert_close(streamed, stored, rtol=1e-4, atol=1e-5 * float(stored.abs().max()))


@pytest.mark.parametrize("rows,cols,block_numbers", [(7, 5, 15), (7, 5, 1), (7, 5, 10**6), (64, 48, 48 * 5), (6, 4, 8)])
def test_blocked_inner_products_equal_brute_force(rows, cols, block_numbers):
    """Blocks of 3 rows with 1 left over, one row each, all rows in one, 5 of 64, 2 of 6: the same
    (Q, B) inner products as a float64 sum over every entry."""
    gen = torch.Generator().manual_seed(rows * cols)
    x, y = torch.randn(3, rows, cols, generator=gen), torch.randn(5, rows, cols, generator=gen)
    expected = torch.einsum("qrc,brc->qb", x.double(), y.double())
    torch.testing.assert_close(blocked_inner_products(x, y, block_numbers).double(), expected, rtol=1e-5, atol=1e-5)


def test_streamed_scores_name_the_layer_whose_document_gradient_is_not_finite(setup):
    """The check runs once per batch, on its scores; a non-finite gradient is still named by layer."""
    lm, docs, factors = setup
    qg = compute_query_gradients(lm, factors, QUERIES[:2])
    poison = lm.model.model.norm.register_full_backward_hook(
        lambda m, gin, gout: (torch.full_like(gin[0], float("inf")),)
    )
    try:
        with pytest.raises(NumericalError, match=rf"document gradient of layer {lm.layers[0].name} is not finite"):
            stream_scores(lm, qg, docs[:4])
    finally:
        poison.remove()


def test_streamed_scores_that_overflow_say_so(setup):
    lm, docs, factors = setup
    qg = compute_query_gradients(lm, factors, QUERIES[:2])
    qg.left = {name: left * 1e38 for name, left in qg.left.items()}
    with pytest.raises(
        NumericalError, match=r"scores of documents 0\.\.3 overflow float32 although their gradients are finite"
    ):
        stream_scores(lm, qg, docs[:6], batch_size=4)


def test_low_rank_queries_score_like_their_reconstruction(setup):
    lm, docs, factors = setup
    low = compute_query_gradients(lm, factors, QUERIES, rank=2)
    dense = compute_query_gradients(lm, factors, QUERIES)
    streamed = stream_scores(lm, low, docs)
    assert pearson(streamed.flatten(), stream_scores(lm, dense, docs).flatten()) > 0.5
    dg = compute_document_gradients(lm, docs, list(map(str, range(len(docs)))))
    stored = score_matrix(low, dg)
    torch.testing.assert_close(streamed, stored, rtol=1e-4, atol=1e-5 * float(stored.abs().max()))


def test_positive_score_means_upweighting_raises_completion_probability():
    """First-order check of the sign and scale: a step eps * H^-1 grad(L_d) on document d changes
    log p(completion) by eps * score(q, d)."""
    lm = wrap_model(tiny_model("llama", seed=2).double(), tiny_tokenizer(), device="cpu")
    docs = random_sequences(12, min_len=8, max_len=24, seed=3)
    factors = fit_factors(lm, lambda: (b for _, b in batches(docs, 4, 0)), fisher="empirical")
    qg = compute_query_gradients(lm, factors, QUERIES[:2])
    dg = compute_document_gradients(lm, docs[:3], ["a", "b", "c"])
    scores = score_matrix(qg, dg)
    sequences, starts = encode_queries(QUERIES[:2], lm.tokenizer)

    def logprobs():
        with torch.no_grad():
            out = []
            for seq, start in zip(sequences, starts):
                ids = torch.tensor([seq])
                logp = torch.log_softmax(lm.model(input_ids=ids).logits[0, :-1], -1)
                out.append(logp.gather(1, ids[0, 1:, None])[start - 1 :].sum())
            return torch.stack(out)

    f64 = factors.to(torch.device("cpu"), torch.float64)
    steps = [
        {layer.name: f64.inverse_hvp(layer.name, dg.grads[layer.name][doc].double()) for layer in lm.layers}
        for doc in range(3)
    ]

    def shift(doc, eps):
        with torch.no_grad():
            for layer in lm.layers:
                layer.module.weight -= eps * steps[doc][layer.name]  # a gradient step on d = upweighting d

    for doc in range(3):
        # H^-1 amplifies: scale the step so no weight moves by more than 3e-5 (RMSNorm runs in float32).
        eps = 3e-5 / max(float(step.abs().max()) for step in steps[doc].values())
        shift(doc, eps)
        up = logprobs()
        shift(doc, -2 * eps)
        down = logprobs()
        shift(doc, eps)
        finite_difference = (up - down) / (2 * eps)
        torch.testing.assert_close(finite_difference, scores[:, doc].double(), rtol=1e-2, atol=0.0)
    assert (scores > 0).any() and (scores < 0).any()


# Pearson correlation of projected against exact scores, per query, on a tiny Llama trained
# for a few seconds (MLP layers of 64 x 32 and 32 x 64). Each floor is the smallest per-query
# value measured over projection seeds 0-9 at that k, rounded down (measured 2026-11-25 raw:
# k=8 0.488, k=16 0.769, k=32 0.975; 2026-11-27 whitened: 0.812, 0.918, 0.985; principal, which
# has no seed, 2026-11-27: 0.797, 0.944, 0.998); `pytest -s` prints the values. Whitened at k is
# about as good as raw at 2k; on this barely trained model principal is not better than whitened
# below k = 32 (on the demo's model it is: README, Projection accuracy).
PROJECTION_FLOORS = {
    "raw": {8: 0.45, 16: 0.75, 32: 0.97},
    "whitened": {8: 0.8, 16: 0.9, 32: 0.98},
    "principal": {8: 0.75, 16: 0.9, 32: 0.99},
}


@pytest.fixture(scope="module")
def trained(trained_llama):
    tok, model = trained_llama
    docs = sentence_documents(tok)
    lm = wrap_model(model, tok, device="cpu")
    return lm, docs, fit_factors(lm, lambda: (b for _, b in batches(docs, 8, 0)))


def projected_pearson(trained, k, seed, basis):
    lm, docs, factors = trained
    exact = stream_scores(lm, compute_query_gradients(lm, factors, QUERIES), docs)
    proj = KroneckerProjection.build(lm.layer_shapes(), k, k, seed=seed, basis=basis, factors=factors)
    approx = stream_scores(lm, compute_query_gradients(lm, factors, QUERIES, projection=proj), docs, projection=proj)
    return [pearson(approx[i], exact[i]) for i in range(len(QUERIES))]


@pytest.mark.parametrize("basis,k", [(basis, k) for basis, floors in PROJECTION_FLOORS.items() for k in floors])
def test_projected_scores_track_exact_scores(trained, basis, k):
    correlations = projected_pearson(trained, k, 0, basis)
    print(f"{basis} k={k}: per-query Pearson {[round(c, 3) for c in correlations]}")
    assert min(correlations) >= PROJECTION_FLOORS[basis][k], correlations


def test_mismatched_projection_is_refused(setup):
    lm, docs, factors = setup
    qg = compute_query_gradients(
        lm, factors, QUERIES, projection=KroneckerProjection.build(lm.layer_shapes(), 8, 8, seed=1)
    )
    other = KroneckerProjection.build(lm.layer_shapes(), 8, 8, seed=2)
    with pytest.raises(InputError, match="same projection"):
        stream_scores(lm, qg, docs, projection=other)
    with pytest.raises(InputError, match="same projection"):
        score_matrix(qg, compute_document_gradients(lm, docs[:2], ["x", "y"]))
