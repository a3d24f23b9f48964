"""Gradient-normalised influence: plain influence divided by a measure of the document's gradient.

Plain influence <H^-1 g_q, g_d> grows with the document's gradient norm, so documents the model
fits badly (long, rare, noisy) can outrank the few that state a query's fact, and a fact stated
many times (each copy already learned, small gradients) sinks. Two normalisations, each ranking
a query's documents by:

- ``influence_unit`` (unit-normalised): <H^-1 g_q, g_d> / (|g_q| |g_d|), both norms in the
  space of the stored document gradients, where the gradient cosine is computed (the query's norm
  is the same for all its documents and changes no ranking; it only puts queries on one scale).
- ``influence_relatif`` (RelatIF, Barshan et al. 2020): <H^-1 g_q, g_d> / sqrt(g_d^T H^-1 g_d),
  the document's self-influence computed from what the store holds (`SelfInfluence`).

Both read the scores from the stored query gradients (preconditioned) and the stored document
gradients, as `pretrace.influence.scores.score_matrix` does: low-rank and quantized stores give
their reconstructed gradients' values, not the exact ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from pretrace.influence.document_gradients import DocumentGradients
from pretrace.influence.projection import FactorSource, KroneckerProjection, kronecker_scales

UNIT, RELATIF = "influence_unit", "influence_relatif"
TINY = 1e-300


@dataclass
class SelfInfluence:
    """g_d^T H^-1 g_d of stored document gradients, as far as the store can give it.

    - no projection (exact gradients): exact, rotating each layer's gradient into the EK-FAC
      eigenbasis: sum (Q_S^T G Q_A)^2 / (Lambda + lambda).
    - ``principal``: exact on the kept block of the eigenbasis, which is all a principal store
      holds: the stored entry is u_i v_j (Q_S^T G Q_A)_ij (`pretrace.influence.projection`), so the
      self-influence is sum D_ij^2 / ((u_i v_j)^2 (Lambda_ij + lambda)) over the kept (i, j); the
      dropped low-curvature rest is missing, as it is from the scores.
    - ``whitened``: an estimate, |D|^2: a random projection of the Kronecker-whitened gradient
      keeps its norm on average, and the whitening u_i v_j approximates (Lambda_ij + lambda)^(-1/2)
      (the Kronecker fit's error enters); RelatIF then ranks as unit-normalised influence does.
    - ``raw``: not available (`of_store` returns None): a Gaussian projection of the raw gradient
      keeps no eigenbasis coordinates to weight.
    """

    exact: bool
    weights: dict[str, torch.Tensor | None]  # per layer: D^2's weights in stored coordinates; None: rotate
    factors: FactorSource | None = None

    @classmethod
    def of_store(
        cls, projection: KroneckerProjection | None, factors: FactorSource | None, layers: Sequence[str]
    ) -> SelfInfluence | None:
        """What the store of ``projection`` can give, with the factors where they are needed; None
        when it gives nothing (a raw projection, or no factors where they are needed)."""
        if projection is not None and projection.basis == "whitened":
            return cls(False, {name: None for name in layers})
        if factors is None or (projection is not None and projection.basis == "raw"):
            return None
        if projection is None:
            return cls(True, {name: None for name in layers}, factors)
        weights = {}
        for name in layers:
            layer = factors.restricted([name])
            lambdas, damping = layer.lambdas[name].double(), layer.damping[name]
            u, v = kronecker_scales(lambdas, damping)
            rows, columns = projection.kept_out.get(name), projection.kept_in.get(name)
            if rows is not None:
                u, lambdas = u[rows], lambdas[rows]
            if columns is not None:
                v, lambdas = v[columns], lambdas[:, columns]
            weights[name] = 1.0 / ((u[:, None] * v[None, :]) ** 2 * (lambdas + damping))
        return cls(True, weights)

    def __call__(self, grads: DocumentGradients) -> torch.Tensor:
        """(N,) float64 self-influence of a shard's stored document gradients."""
        total = torch.zeros(len(grads.ids), dtype=torch.float64)
        for name, weight in self.weights.items():
            D = grads.dense(name).double()
            if weight is not None:
                total += (D.square() * weight).flatten(1).sum(dim=1)
            elif self.factors is not None:
                layer = self.factors.restricted([name])
                QS, QA = layer.QS[name].double(), layer.QA[name].double()
                rotated = QS.T @ D @ QA
                total += (rotated.square() / (layer.lambdas[name].double() + layer.damping[name])).flatten(1).sum(dim=1)
            else:
                total += D.square().flatten(1).sum(dim=1)
        return total


def normalised_influence(
    scores: torch.Tensor,
    query_norms: torch.Tensor,
    document_norms: torch.Tensor,
    self_influence: torch.Tensor | None,
) -> dict[str, torch.Tensor]:
    """Each variant's (Q, N) values from influence ``scores`` (Q, N), the queries' and documents'
    gradient norms in the stored space, and the documents' self-influence (None: no RelatIF)."""
    out = {UNIT: scores / (query_norms[:, None] * document_norms[None, :]).clamp_min(TINY)}
    if self_influence is not None:
        out[RELATIF] = scores / self_influence.clamp_min(0).sqrt().clamp_min(TINY)[None, :]
    return out
