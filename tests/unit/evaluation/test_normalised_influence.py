"""Gradient-normalised influence (unit-normalised, RelatIF) against explicit gradients and a dense
inverse of the EK-FAC curvature, on hand-built layers and on a tiny fitted model."""

import torch

from pretrace.evaluation.attribution_check import Documents, gradient_rankings
from pretrace.evaluation.normalised_influence import RELATIF, UNIT, SelfInfluence, normalised_influence
from pretrace.influence.document_gradients import DocumentGradients, compute_document_gradients
from pretrace.influence.ekfac import Factors
from pretrace.influence.projection import KroneckerProjection
from pretrace.influence.query_gradients import compute_query_gradients
from pretrace.inputs.query_file import Query
from pretrace.testing.tiny import fitted_tiny_llama, random_sequences

D_OUT, D_IN, N = 5, 4, 6


def synthetic_factors(seed: int = 0) -> Factors:
    g = torch.Generator().manual_seed(seed)
    QS, _ = torch.linalg.qr(torch.randn(D_OUT, D_OUT, generator=g, dtype=torch.float64))
    QA, _ = torch.linalg.qr(torch.randn(D_IN, D_IN, generator=g, dtype=torch.float64))
    lambdas = 10 ** (3 * torch.rand(D_OUT, D_IN, generator=g, dtype=torch.float64) - 2)
    return Factors({"w": QA}, {"w": QS}, {"w": lambdas}, {"w": 1e-2})


def eigenvectors(f: Factors, rows=None, columns=None) -> list[tuple[torch.Tensor, float]]:
    """Each Kronecker eigenvector vec(q_S,i q_A,j^T) of the EK-FAC curvature with its eigenvalue,
    for the eigenbasis block (rows, columns) (all by default)."""
    QS, QA, lam = f.QS["w"], f.QA["w"], f.lambdas["w"] + f.damping["w"]
    return [
        (torch.outer(QS[:, i], QA[:, j]).flatten(), float(lam[i, j]))
        for i in (range(D_OUT) if rows is None else rows.tolist())
        for j in (range(D_IN) if columns is None else columns.tolist())
    ]


def dense_inverse(f: Factors, rows=None, columns=None) -> torch.Tensor:
    """H^-1 as a dense matrix, restricted to the span of the block's eigenvectors: the inverse of
    the explicit sum of eigenvalue-weighted outer products on that span."""
    pairs = eigenvectors(f, rows, columns)
    E = torch.stack([e for e, _ in pairs], dim=1)
    H = E @ torch.diag(torch.tensor([x for _, x in pairs], dtype=torch.float64)) @ E.T
    return E @ torch.linalg.inv(E.T @ H @ E) @ E.T


def gradients(seed: int) -> torch.Tensor:
    return torch.randn(N, D_OUT, D_IN, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def stored(G: torch.Tensor, projection: KroneckerProjection | None) -> DocumentGradients:
    D = G if projection is None else projection.project_matrix("w", G).double()
    return DocumentGradients([str(i) for i in range(len(G))], {"w": D}, torch.zeros(len(G)), None)


def brute_self_influence(G: torch.Tensor, H_inv: torch.Tensor) -> torch.Tensor:
    flat = G.flatten(1)
    return torch.einsum("ni,ij,nj->n", flat, H_inv, flat)


def test_exact_gradients_give_the_exact_self_influence():
    f, G = synthetic_factors(), gradients(1)
    self_influence = SelfInfluence.of_store(None, f, ["w"])
    assert self_influence.exact
    torch.testing.assert_close(self_influence(stored(G, None)), brute_self_influence(G, dense_inverse(f)))


def test_a_principal_store_gives_the_self_influence_of_its_kept_block_exactly():
    f, G = synthetic_factors(), gradients(2)
    projection = KroneckerProjection.build(
        {"w": (D_OUT, D_IN)}, 3, 2, basis="principal", factors=f, dtype=torch.float64
    )
    rows, columns = projection.kept_out["w"], projection.kept_in["w"]
    assert rows is not None and columns is not None  # a real truncation
    self_influence = SelfInfluence.of_store(projection, f, ["w"])
    assert self_influence.exact
    block = brute_self_influence(G, dense_inverse(f, rows, columns))
    torch.testing.assert_close(self_influence(stored(G, projection)), block)
    assert (block < brute_self_influence(G, dense_inverse(f)) - 1e-9).all()  # what it drops is missing


def test_whitened_stores_estimate_and_raw_or_factorless_stores_give_none():
    f, G = synthetic_factors(), gradients(3)
    whitened = KroneckerProjection.build({"w": (D_OUT, D_IN)}, 3, 3, basis="whitened", factors=f)
    estimate = SelfInfluence.of_store(whitened, f, ["w"])
    assert not estimate.exact
    D = stored(G, whitened)
    torch.testing.assert_close(estimate(D), D.grads["w"].square().flatten(1).sum(dim=1))
    raw = KroneckerProjection.build({"w": (D_OUT, D_IN)}, 3, 3, basis="raw")
    assert SelfInfluence.of_store(raw, f, ["w"]) is None
    assert SelfInfluence.of_store(None, None, ["w"]) is None


def test_the_variants_divide_exact_influence_as_defined():
    """A principal projection as wide as the layer is exact: each variant equals the dense formula."""
    f, G, q = synthetic_factors(), gradients(4), gradients(5)[:2]
    projection = KroneckerProjection.build(
        {"w": (D_OUT, D_IN)}, D_OUT, D_IN, basis="principal", factors=f, dtype=torch.float64
    )
    H_inv = dense_inverse(f)
    preconditioned = (q.flatten(1) @ H_inv).reshape_as(q)
    qp = projection.dual().project_matrix("w", preconditioned).flatten(1)
    D = stored(G, projection)
    d = D.grads["w"].flatten(1)
    q_cos = projection.project_matrix("w", q).flatten(1)
    variants = normalised_influence(
        qp @ d.T, q_cos.norm(dim=1), d.norm(dim=1), SelfInfluence.of_store(projection, f, ["w"])(D)
    )
    exact = q.flatten(1) @ H_inv @ G.flatten(1).T
    torch.testing.assert_close(qp @ d.T, exact)
    selfs = brute_self_influence(G, H_inv)
    torch.testing.assert_close(variants[RELATIF], exact / selfs.sqrt()[None, :])
    # the cosine's space: the eigenbasis, scaled by the Kronecker fit u v^T of (Lambda + lambda)^(-1/2)
    u, v = projection.P_out["w"].norm(dim=1), projection.P_in["w"].norm(dim=1)

    def whitened_norm(X):
        return ((f.QS["w"].T @ X @ f.QA["w"]) * (u[:, None] * v[None, :])).flatten(1).norm(dim=1)

    torch.testing.assert_close(variants[UNIT], exact / (whitened_norm(q)[:, None] * whitened_norm(G)[None, :]))


def test_the_check_ranks_documents_by_each_variant_of_exact_influence():
    """On a tiny fitted model with an exact store, the check's top k of each variant are the top k
    of influence computed from exact gradients, divided by the documents' norms and by the square
    roots of their self-influence g^T H^-1 g (from the EK-FAC inverse-HVP)."""
    docs = random_sequences(10, min_len=6, max_len=14, seed=7)
    lm, factors = fitted_tiny_llama(3, docs, double=True)
    queries = [Query("a", "The capital of France is", " Paris."), Query("b", "(7 - 4) * 8 =", " 24")]
    ids = [f"d{i}" for i in range(len(docs))]
    documents = Documents([("s", i) for i in ids], docs, [""] * len(docs), [None] * len(docs))
    exact_docs = compute_document_gradients(lm, docs, ids)
    preconditioned = compute_query_gradients(lm, factors, queries)
    ranked = gradient_rankings(
        lm,
        queries,
        [("s", exact_docs)],
        documents,
        4,
        None,
        4,
        preconditioned=preconditioned,
        self_influence=SelfInfluence.of_store(None, factors, [layer.name for layer in lm.layers]),
    )
    f64 = factors.to(torch.device("cpu"), torch.float64)
    grads = {n: g.double() for n, g in exact_docs.grads.items()}
    scores = sum(preconditioned.dense(n).double().flatten(1) @ g.flatten(1).T for n, g in grads.items())
    norms = torch.cat([grads[n].flatten(1) for n in sorted(grads)], dim=1).norm(dim=1)
    selfs = sum((f64.inverse_hvp(n, g) * g).flatten(1).sum(dim=1) for n, g in grads.items())
    for method, values in ((UNIT, scores / norms), (RELATIF, scores / selfs.sqrt())):
        expected = [values[q].argsort(descending=True)[:4].tolist() for q in range(len(queries))]
        assert ranked[method] == expected, method
