"""Kronecker projections that shrink a (d_out, d_in) gradient to (k_out, k_in).

A projection applies one matrix to each token's output gradient g_t and one to its input a_t,
so sum_t g_t a_t^T becomes sum_t (M_out g_t)(M_in a_t)^T and the full per-document gradient is
never formed. Its `dual` is what a query is projected with, so that <dual(X), M(Y)> estimates
<X, Y>; the estimate is unbiased with Gaussian P of variance 1/k (E[P^T P] = I).

Three bases:
- ``raw``: M = P, its own dual. Cheap and independent of the EK-FAC factors, but the score
  <H^-1 q, d> pairs a query living mostly in the low-curvature directions with documents living
  mostly in the high-curvature ones, and a random projection's error, which scales with the two
  vectors' norms, swamps their small inner product.
- ``whitened``: project in the EK-FAC eigenbasis after scaling by a Kronecker approximation
  u v^T of (Lambda + lambda)^(-1/2): M = P diag(u) Q^T, dual P diag(1/u) Q^T. Query and documents
  then meet in the space where the preconditioned inner product is roughly Euclidean, which is
  where a random projection's error is smallest relative to the inner product it estimates.
  Document gradients then depend on the factors.
- ``principal``: no random matrix: keep the k_out x k_in block of the EK-FAC eigenbasis whose
  eigenvectors carry the most curvature (rows and columns of Lambda / (Lambda + lambda) with the
  largest sums), scaled as ``whitened`` so that a factored store truncates in that metric. Inside
  the block, scores are exact (the scales cancel); what it drops is the low-curvature rest,
  where a document's whitened gradient has the least energy, instead of mixing every direction's
  energy into noise. Deterministic (the seed is unused); documents depend on the factors. On the
  demo's trained model it keeps about as much of the exact scores at 32 x 32 as ``whitened`` at
  64 x 64 (docs/performance.md, "Projection accuracy").
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, get_args

import torch

from pretrace.config import PretraceConfig, ProjectionBasis
from pretrace.errors import InputError

if TYPE_CHECKING:
    from pretrace.influence.ekfac import Factors

BASES: tuple[str, ...] = get_args(ProjectionBasis)
Matrices = dict[str, torch.Tensor | None]  # None: the identity


class FactorSource(Protocol):
    """The EK-FAC factors, or anything that hands them out a layer at a time (a stored file read
    layer by layer, so a 7B model's 70 GB of factors never sit in host memory at once)."""

    @property
    def layers(self) -> list[str]: ...

    def restricted(self, names: Sequence[str]) -> Factors: ...


def _gaussian(k: int, d: int, seed: int, salt: str) -> torch.Tensor | None:
    """A (k, d) Gaussian projection, or None (identity) when k does not shrink d."""
    if k >= d:
        return None
    generator = torch.Generator().manual_seed((seed * 2_654_435_761 + zlib.crc32(salt.encode())) % (2**63))
    return torch.randn(k, d, generator=generator, dtype=torch.float32) / k**0.5


def _selection(k: int, weights: torch.Tensor) -> torch.Tensor | None:
    """The indices of the k largest ``weights``, in order, or None (all of them) when k does
    not shrink d."""
    if k >= len(weights):
        return None
    return weights.topk(k).indices.sort().values


def principal_selections(
    lambdas: torch.Tensor, damping: float, k_out: int, k_in: int
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Which eigenvectors of each Kronecker factor a ``principal`` projection keeps: those whose
    row (output side) or column (input side) of Lambda / (Lambda + lambda) sums largest, i.e.
    where documents' whitened gradients hold the most energy (Lambda is their mean square)."""
    saturation = lambdas.double() / (lambdas.double() + damping)
    return _selection(k_out, saturation.sum(dim=1)), _selection(k_in, saturation.sum(dim=0))


def kronecker_scales(lambdas: torch.Tensor, damping: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(u, v) with u_i v_j closest to (Lambda_ij + lambda)^(-1/2) in log space.

    Minimizing sum_ij (log u_i + log v_j - log W_ij)^2 is the two-way additive fit: row means
    plus column means minus the grand mean, split evenly between the two sides.
    """
    log_w = -0.5 * torch.log(lambdas.double() + damping)
    rows, columns, grand = log_w.mean(dim=1), log_w.mean(dim=0), log_w.mean()
    return torch.exp(rows - grand / 2), torch.exp(columns - grand / 2)


def _times(P: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor:
    """P @ rows, where P None is the identity and integer P the rows of the identity it names
    (a selection, taken without a d x d product); on the rows' device (factors fitted on a GPU)."""
    if P is None:
        return rows
    P = P.to(rows.device)
    return rows[P] if not P.is_floating_point() else P.double() @ rows


@dataclass
class KroneckerProjection:
    """Per-layer matrices for documents (`P_out`, `P_in`) and their duals for queries,
    reproducible from (k_out, k_in, seed, basis) and, unless raw, the factors."""

    k_out: int
    k_in: int
    seed: int
    basis: ProjectionBasis
    P_out: Matrices
    P_in: Matrices
    dual_out: Matrices
    dual_in: Matrices
    kept_out: Matrices = field(default_factory=dict)
    """Per layer, the output-side eigenvectors a principal projection keeps (its matrices read
    no others, so a query need not be rotated onto the rest); absent or None: all of them."""
    kept_in: Matrices = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        shapes: dict[str, tuple[int, int]],
        k_out: int,
        k_in: int,
        seed: int = 0,
        basis: ProjectionBasis = "raw",
        factors: FactorSource | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> KroneckerProjection:
        """The projection of layers ``shapes``; in the eigenbasis, computed in float64 on the host
        from one layer's factors at a time and kept in ``dtype`` (float32: what a pass computes in;
        the raw basis's Gaussian matrices are drawn in float32 whatever ``dtype``)."""
        if k_out < 1 or k_in < 1:
            raise InputError(f"projection: sizes must be positive integers, got [{k_out}, {k_in}]")
        if basis not in BASES:
            raise InputError(f"projection_basis: {basis!r} is not one of {', '.join(BASES)}")
        if basis == "raw":
            P_out = {name: _gaussian(k_out, d_out, seed, f"{name}:out") for name, (d_out, _) in shapes.items()}
            P_in = {name: _gaussian(k_in, d_in, seed, f"{name}:in") for name, (_, d_in) in shapes.items()}
            return cls(k_out, k_in, seed, basis, P_out, P_in, P_out, P_in)
        if factors is None:
            raise ValueError(f"a {basis} projection is built from the EK-FAC factors; pass them")
        missing = sorted(set(shapes) - set(factors.layers))
        if missing:
            raise InputError(f"the EK-FAC factors were fitted without layers {missing}; refit them for these layers")
        built = cls(k_out, k_in, seed, basis, {}, {}, {}, {})
        for name, (d_out, d_in) in shapes.items():
            layer = factors.restricted([name])
            QS, QA, lambdas, damping = layer.QS[name], layer.QA[name], layer.lambdas[name], layer.damping[name]
            if basis == "principal":
                P_out, P_in = principal_selections(lambdas, damping, k_out, k_in)
                built.kept_out[name], built.kept_in[name] = P_out, P_in
            else:
                P_out, P_in = _gaussian(k_out, d_out, seed, f"{name}:out"), _gaussian(k_in, d_in, seed, f"{name}:in")
            u, v = kronecker_scales(lambdas, damping)
            QS_T, QA_T = QS.double().T, QA.double().T
            built.P_out[name] = _times(P_out, u[:, None] * QS_T).to(dtype)
            built.dual_out[name] = _times(P_out, QS_T / u[:, None]).to(dtype)
            built.P_in[name] = _times(P_in, v[:, None] * QA_T).to(dtype)
            built.dual_in[name] = _times(P_in, QA_T / v[:, None]).to(dtype)
        return built

    def dual(self) -> KroneckerProjection:
        """The projection to apply to the other side of an inner product (itself when raw)."""
        return KroneckerProjection(
            self.k_out,
            self.k_in,
            self.seed,
            self.basis,
            self.dual_out,
            self.dual_in,
            self.P_out,
            self.P_in,
            self.kept_out,
            self.kept_in,
        )

    def for_documents(self, names: Sequence[str], device: torch.device, dtype: torch.dtype) -> KroneckerProjection:
        """What a document pass over layers ``names`` applies, on ``device`` in ``dtype`` (the pass's
        float32, or float64 for a float64 model): their ``P_out`` (k_out, d_out) and ``P_in``
        (k_in, d_in) alone. The duals (the queries'), the other layers' matrices and the factors
        the matrices were made from stay behind; for a principal projection these matrices are
        the kept eigenvectors, scaled."""
        kept = set(names)

        def move(d):
            return {k: None if v is None else v.to(device, dtype) for k, v in d.items() if k in kept}

        return KroneckerProjection(
            self.k_out, self.k_in, self.seed, self.basis, move(self.P_out), move(self.P_in), {}, {}
        )

    def to(self, device: torch.device, dtype: torch.dtype = torch.float32) -> KroneckerProjection:
        def move(d):
            return {k: None if v is None else v.to(device, dtype) for k, v in d.items()}

        def place(d):
            return {k: None if v is None else v.to(device) for k, v in d.items()}

        return KroneckerProjection(
            self.k_out,
            self.k_in,
            self.seed,
            self.basis,
            move(self.P_out),
            move(self.P_in),
            move(self.dual_out),
            move(self.dual_in),
            place(self.kept_out),
            place(self.kept_in),
        )

    def project_tokens(self, name: str, a: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Project per-token inputs (.., d_in) and output gradients (.., d_out)."""
        P_in, P_out = self.P_in[name], self.P_out[name]
        return (a if P_in is None else a.to(P_in.dtype) @ P_in.T), (g if P_out is None else g.to(P_out.dtype) @ P_out.T)

    def project_matrix(self, name: str, X: torch.Tensor) -> torch.Tensor:
        """P_out X P_in^T for X of shape (..., d_out, d_in)."""
        P_in, P_out = self.P_in[name], self.P_out[name]
        if P_out is not None:
            X = P_out @ X.to(P_out.dtype)
        if P_in is not None:
            X = X.to(P_in.dtype) @ P_in.T
        return X

    def describe(self) -> dict:
        """What reproduces the projection, as stored beside gradients: the seed only where a
        random matrix is drawn from it (so principal gradients' bytes do not depend on it)."""
        seeded = {} if self.basis == "principal" else {"seed": self.seed}
        return {"k_out": self.k_out, "k_in": self.k_in, **seeded, "basis": self.basis}


def projection_for(
    config: PretraceConfig, shapes: dict[str, tuple[int, int]], factors: Factors | None = None
) -> KroneckerProjection | None:
    """The projection a configuration asks for (`projection: [k_out, k_in]`,
    `projection_basis`), or None (exact); one in the eigenbasis needs the factors."""
    if config.projection is None:
        return None
    k_out, k_in = config.projection
    return KroneckerProjection.build(
        shapes, k_out, k_in, seed=config.seed, basis=config.projection_basis, factors=factors
    )
