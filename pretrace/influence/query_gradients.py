"""Query gradients: the preconditioned gradient of each query's completion loss.

The measurement is log p(completion | prompt) summed over completion tokens. We store the
EK-FAC-preconditioned gradient of its negative (the completion's loss), so that
score = <H^-1 grad(-log p_q), grad L_d> is positive when upweighting document d lowers the
query's loss, i.e. raises the probability of its completion.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from pretrace.errors import InputError
from pretrace.influence.capture import capture, check_finite
from pretrace.influence.ekfac import Factors, rotated_gradients
from pretrace.influence.layer_groups import by_layer_group, join_layers
from pretrace.influence.low_rank import factorize
from pretrace.influence.projection import KroneckerProjection
from pretrace.inputs.batching import batches
from pretrace.inputs.query_file import Query, encode_queries
from pretrace.model.adapter import LoadedModel
from pretrace.store.serialization import pack, unpack


@dataclass
class QueryGradients:
    """Preconditioned (optionally projected, optionally rank-r) query gradients per layer.

    Dense: `left[name]` is (Q, k_out, k_in) and `right` is empty. Low rank: the gradient is
    left[name] @ right[name]^T with left (Q, k_out, r) and right (Q, k_in, r).
    """

    ids: list[str]
    logprobs: torch.Tensor  # (Q,) log p(completion | prompt) in nats
    left: dict[str, torch.Tensor]
    right: dict[str, torch.Tensor]
    projection: dict | None
    rank: int | None

    def dense(self, name: str) -> torch.Tensor:
        """(Q, k_out, k_in), reconstructing low-rank factors when needed."""
        if self.rank is None:
            return self.left[name]
        return self.left[name] @ self.right[name].transpose(1, 2)

    @property
    def layers(self) -> list[str]:
        return list(self.left)

    @classmethod
    def join(cls, groups: Sequence[QueryGradients]) -> QueryGradients:
        """The gradients of every layer from those of disjoint layer groups (same queries)."""
        first = groups[0]
        return cls(
            first.ids,
            first.logprobs,
            join_layers([g.left for g in groups]),
            join_layers([g.right for g in groups]),
            first.projection,
            first.rank,
        )

    def to_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        tensors = {f"{k}::left": v for k, v in self.left.items()} | {f"{k}::right": v for k, v in self.right.items()}
        tensors["logprobs"] = self.logprobs
        return pack(
            tensors, "query_gradients", ids=self.ids, layers=self.layers, projection=self.projection, rank=self.rank
        )

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> QueryGradients:
        meta = unpack(metadata, "query_gradients")
        layers, rank = meta["layers"], meta["rank"]
        right = {} if rank is None else {k: tensors[f"{k}::right"] for k in layers}
        left = {k: tensors[f"{k}::left"] for k in layers}
        return cls(meta["ids"], tensors["logprobs"], left, right, meta["projection"], rank)


def compute_query_gradients(
    lm: LoadedModel,
    factors: Factors,
    queries: Sequence[Query],
    *,
    projection: KroneckerProjection | None = None,
    rank: int | None = None,
    batch_size: int = 8,
    progress: Callable[[int], None] | None = None,
    groups: int = 1,
    gather: torch.device | str = "cpu",
) -> QueryGradients:
    """Gradients of each completion's loss, preconditioned by EK-FAC, projected, compressed."""
    sequences, starts = encode_queries(queries, lm.tokenizer, lm.max_context)
    return query_gradients_from_tokens(
        lm,
        factors,
        sequences,
        starts,
        [q.id for q in queries],
        projection=projection,
        rank=rank,
        batch_size=batch_size,
        progress=progress,
        groups=groups,
        gather=gather,
    )


def query_gradients_from_tokens(
    lm: LoadedModel,
    factors: Factors,
    sequences: Sequence[Sequence[int]],
    completion_starts: Sequence[int],
    ids: Sequence[str],
    *,
    projection: KroneckerProjection | None = None,
    rank: int | None = None,
    batch_size: int = 8,
    progress: Callable[[int], None] | None = None,
    groups: int = 1,
    gather: torch.device | str = "cpu",
) -> QueryGradients:
    """As `compute_query_gradients`, for queries already tokenized (completion from the index
    given); with ``groups`` > 1, a layer group at a time (only its factors on the device). The
    gradients are gathered on ``gather``: the host for storage, or the model's device for a
    caller that scores with them there at once (a dense 1B-model query gradient is 3 GB to move)."""
    if rank is not None and rank < 1:
        raise InputError(f"query_rank: must be a positive integer or null, got {rank}")
    missing = [layer.name for layer in lm.layers if layer.name not in factors.QA]
    if missing:
        raise InputError(f"the EK-FAC factors were fitted without layers {missing}; refit them for these layers")
    return by_layer_group(
        lm,
        groups,
        lambda group: _preconditioned(
            group, factors, sequences, completion_starts, ids, projection, rank, batch_size, progress, gather
        ),
        QueryGradients.join,
    )


@dataclass
class LayerPreconditioner:
    """What one layer's query gradients are preconditioned and projected with, on the device in
    the pass's float32 (float64 for a float64 model): the eigenbases Q_S (d_out, m_out) and Q_A
    (d_in, m_in) and the corrected eigenvalues Lambda (m_out, m_in) that a query is rotated onto
    (all of them, m = d, unless a principal projection keeps m_out = k_out and m_in = k_in), and
    the pair that rotates back and projects (the projection's dual times Q): (k, m) matrices, or
    for a principal projection the (k,) scales of a diagonal pair."""

    QS: torch.Tensor
    QA: torch.Tensor
    lambdas: torch.Tensor
    damping: float
    back_left: torch.Tensor
    back_right: torch.Tensor
    diagonal: bool

    def denominator(self) -> torch.Tensor:
        """Lambda + lambda, made when used rather than held beside Lambda for every layer."""
        return self.lambdas + self.damping


def layer_preconditioner(
    factors: Factors,
    name: str,
    projection: KroneckerProjection | None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> LayerPreconditioner:
    """One layer's `LayerPreconditioner`, moved to ``device`` in ``dtype``. A principal projection
    reads only its kept eigenvectors: they are selected on the host, so the rest never reach the
    device, and its pair (its dual's scales, diag(dual @ Q_kept)) is computed there in float64.
    Rotating back out of the eigenbasis and projecting (with the dual of the documents'
    projection, so that inner products with them estimate the score) compose into one pair, made
    on the device from the full eigenbases for the other bases."""
    rows = None if projection is None else projection.kept_out.get(name)
    columns = None if projection is None else projection.kept_in.get(name)
    QS = factors.QS[name] if rows is None else factors.QS[name][:, rows]
    QA = factors.QA[name] if columns is None else factors.QA[name][:, columns]
    lambdas = factors.lambdas[name] if rows is None else factors.lambdas[name][rows]
    lambdas = lambdas if columns is None else lambdas[:, columns]
    diagonal = projection is not None and projection.basis == "principal"
    if diagonal:
        left = (projection.dual_out[name].to(QS.device, torch.float64) * QS.double().T).sum(dim=1)
        right = (projection.dual_in[name].to(QA.device, torch.float64) * QA.double().T).sum(dim=1)
    QS, QA, lambdas = (t.to(device, dtype) for t in (QS, QA, lambdas))
    if not diagonal:
        out = None if projection is None else projection.dual_out[name]
        in_ = None if projection is None else projection.dual_in[name]
        left = QS if out is None else out.to(device, dtype) @ QS
        right = QA if in_ is None else in_.to(device, dtype) @ QA
    return LayerPreconditioner(
        QS, QA, lambdas, factors.damping[name], left.to(device, dtype), right.to(device, dtype), diagonal
    )


def _preconditioned(
    lm: LoadedModel,
    factors: Factors,
    sequences: Sequence[Sequence[int]],
    completion_starts: Sequence[int],
    ids: Sequence[str],
    projection: KroneckerProjection | None,
    rank: int | None,
    batch_size: int,
    progress: Callable[[int], None] | None,
    gather: torch.device | str,
) -> QueryGradients:
    layers = {
        layer.name: layer_preconditioner(factors, layer.name, projection, lm.device, lm.accumulate_dtype)
        for layer in lm.layers
    }
    left: dict[str, list[torch.Tensor]] = {layer.name: [] for layer in lm.layers}
    right: dict[str, list[torch.Tensor]] = {layer.name: [] for layer in lm.layers}
    logprobs = []
    pad = lm.pad_token_id
    for _, batch in batches(sequences, batch_size, pad, first_target=completion_starts):
        cap = capture(lm, batch, "data")
        logprobs.append(-cap.losses.double().cpu())
        for name in left:
            layer = layers[name]
            scaled = rotated_gradients(cap.a[name], cap.g[name], layer.QA, layer.QS) / layer.denominator()
            if layer.diagonal:
                X = scaled * layer.back_left[:, None] * layer.back_right
            else:
                X = layer.back_left @ scaled @ layer.back_right.T
            check_finite(X, "preconditioned query gradient", name)
            if rank is None:
                left[name].append(X.to(gather))
            else:
                L, R = factorize(X, rank)
                left[name].append(L.to(gather))
                right[name].append(R.to(gather))
        if progress is not None:
            progress(batch.size)
    return QueryGradients(
        list(ids),
        torch.cat(logprobs),
        {k: torch.cat(v) for k, v in left.items()},
        {k: torch.cat(v) for k, v in right.items() if v},
        None if projection is None else projection.describe(),
        rank,
    )
