"""Kronecker projections, raw, whitened and principal: what a query's dual and a document's
projection estimate, checked against the unprojected inner products they stand for."""

import numpy as np
import pytest
import torch

from pretrace.influence.document_gradients import compute_document_gradients
from pretrace.influence.ekfac import Factors
from pretrace.influence.projection import KroneckerProjection, kronecker_scales
from pretrace.influence.query_gradients import compute_query_gradients
from pretrace.influence.scores import score_matrix
from pretrace.inputs.query_file import Query
from pretrace.testing.tiny import fitted_tiny_llama, random_sequences

D_OUT, D_IN, K = 12, 10, 4
QUERIES = [Query("capital", "The capital of France is", " Paris."), Query("arith", "(7 - 4) * 8 =", " 24")]


def synthetic_factors(seed: int = 0) -> Factors:
    """One layer's eigenbases (random orthogonal) and corrected eigenvalues spread over four
    orders of magnitude, like a trained model's."""
    g = torch.Generator().manual_seed(seed)
    QS, _ = torch.linalg.qr(torch.randn(D_OUT, D_OUT, generator=g, dtype=torch.float64))
    QA, _ = torch.linalg.qr(torch.randn(D_IN, D_IN, generator=g, dtype=torch.float64))
    lambdas = 10 ** (4 * torch.rand(D_OUT, D_IN, generator=g, dtype=torch.float64) - 3)
    return Factors({"w": QA.float()}, {"w": QS.float()}, {"w": lambdas.float()}, {"w": 1e-3})


def test_kronecker_scales_are_the_least_squares_fit_in_log_space():
    lambdas, damping = synthetic_factors().lambdas["w"], 1e-3
    u, v = kronecker_scales(lambdas, damping)
    target = -0.5 * np.log(lambdas.double().numpy() + damping)
    # the same fit by a dense least-squares solve over (log u, log v)
    design = np.zeros((D_OUT * D_IN, D_OUT + D_IN))
    for i in range(D_OUT):
        for j in range(D_IN):
            design[i * D_IN + j, [i, D_OUT + j]] = 1
    solution = np.linalg.lstsq(design, target.ravel(), rcond=None)[0]
    fitted = solution[:D_OUT, None] + solution[None, D_OUT:]  # the split between u and v is free
    np.testing.assert_allclose(np.log(u.numpy())[:, None] + np.log(v.numpy())[None, :], fitted, atol=1e-10)
    # exactly Kronecker eigenvalues are reproduced exactly
    s, a = torch.rand(D_OUT, dtype=torch.float64) + 0.1, torch.rand(D_IN, dtype=torch.float64) + 0.1
    u, v = kronecker_scales(s[:, None] * a[None, :], 0.0)
    np.testing.assert_allclose((u[:, None] * v[None, :]).numpy(), (s[:, None] * a[None, :]).numpy() ** -0.5, rtol=1e-10)


@pytest.mark.parametrize("basis", ["raw", "whitened"])
def test_a_projection_and_its_dual_estimate_inner_products_without_bias(basis):
    """Over many projection seeds, <dual(X), P(Y)> averages to <X, Y>: the mean's distance from
    the truth stays within 4 standard errors measured from the same draws."""
    factors = synthetic_factors()
    g = torch.Generator().manual_seed(1)
    X, Y = torch.randn(D_OUT, D_IN, generator=g), torch.randn(D_OUT, D_IN, generator=g)
    truth = float((X.double() * Y.double()).sum())
    draws = []
    for seed in range(3000):
        projection = KroneckerProjection.build({"w": (D_OUT, D_IN)}, K, K, seed=seed, basis=basis, factors=factors)
        estimate = projection.dual().project_matrix("w", X) * projection.project_matrix("w", Y)
        draws.append(float(estimate.double().sum()))
    draws = np.array(draws)
    standard_error = draws.std(ddof=1) / np.sqrt(len(draws))
    assert abs(draws.mean() - truth) < 4 * standard_error, (draws.mean(), truth, standard_error)
    assert draws.std() > 0.05 * abs(truth)  # a real projection: single draws do vary


@pytest.mark.parametrize("basis", ["whitened", "principal"])
def test_a_projection_in_the_eigenbasis_that_does_not_shrink_is_exact(basis):
    """With k at least the layer's width, the projection is a scaled rotation and its dual
    undoes the scaling: stored scores equal exact ones."""
    docs = random_sequences(12, min_len=6, max_len=16, seed=3)
    lm, factors = fitted_tiny_llama(4, docs)
    wide = max(max(shape) for shape in lm.layer_shapes().values())
    projection = KroneckerProjection.build(lm.layer_shapes(), wide, wide, seed=0, basis=basis, factors=factors)
    assert all(m is not None and m.shape[0] == m.shape[1] for m in projection.P_out.values())  # rotations, not None
    ids = [str(i) for i in range(len(docs))]
    exact = score_matrix(compute_query_gradients(lm, factors, QUERIES), compute_document_gradients(lm, docs, ids))
    stored = score_matrix(
        compute_query_gradients(lm, factors, QUERIES, projection=projection),
        compute_document_gradients(lm, docs, ids, projection=projection),
    )
    scale = exact.abs().max()
    torch.testing.assert_close(stored / scale, exact / scale, atol=2e-5, rtol=0)


@pytest.mark.parametrize("basis", ["whitened", "principal"])
def test_a_projection_in_the_eigenbasis_needs_the_factors_of_every_layer(basis):
    with pytest.raises(ValueError, match="factors"):
        KroneckerProjection.build({"w": (D_OUT, D_IN)}, K, K, basis=basis)
    with pytest.raises(Exception, match=r"without layers \['v'\]"):
        KroneckerProjection.build({"w": (D_OUT, D_IN), "v": (3, 3)}, K, K, basis=basis, factors=synthetic_factors())


def test_an_unknown_basis_is_refused_by_name():
    with pytest.raises(Exception, match="projection_basis: 'pca' is not one of whitened, principal, raw"):
        KroneckerProjection.build({"w": (D_OUT, D_IN)}, K, K, basis="pca", factors=synthetic_factors())


def test_a_principal_projection_scores_exactly_on_the_eigenvectors_of_most_curvature():
    """Brute force: rotate each dense query (preconditioned) and document gradient into the
    eigenbasis, keep the k_out rows and k_in columns whose Lambda / (Lambda + lambda) sums
    are largest, and sum the products there. The stored scores are exactly that, whatever the
    seed, and differ from the exact scores (something was dropped)."""
    docs = random_sequences(10, min_len=6, max_len=16, seed=5)
    lm, factors = fitted_tiny_llama(4, docs, double=True)
    k_out, k_in = 5, 7
    ids = [str(i) for i in range(len(docs))]
    queries, documents = compute_query_gradients(lm, factors, QUERIES), compute_document_gradients(lm, docs, ids)
    expected = torch.zeros(len(QUERIES), len(docs), dtype=torch.float64)
    for name in lm.layer_shapes():
        QS, QA, lambdas = factors.QS[name].double(), factors.QA[name].double(), factors.lambdas[name].double()
        saturation = (lambdas / (lambdas + factors.damping[name])).numpy()
        rows = np.argsort(-saturation.sum(axis=1))[:k_out]
        columns = np.argsort(-saturation.sum(axis=0))[:k_in]
        q = (QS.T @ queries.dense(name).double() @ QA)[:, rows][:, :, columns]
        d = (QS.T @ documents.dense(name).double() @ QA)[:, rows][:, :, columns]
        expected += torch.einsum("qij,dij->qd", q, d)
    exact = score_matrix(queries, documents).double()
    for seed in (0, 3):
        projection = KroneckerProjection.build(
            lm.layer_shapes(), k_out, k_in, seed=seed, basis="principal", factors=factors
        )
        stored = score_matrix(
            compute_query_gradients(lm, factors, QUERIES, projection=projection),
            compute_document_gradients(lm, docs, ids, projection=projection),
        ).double()
        scale = exact.abs().max()
        torch.testing.assert_close(stored / scale, expected / scale, atol=1e-5, rtol=0)
    assert (stored - exact).abs().max() > 1e-2 * scale
