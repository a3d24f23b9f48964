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


def _denominator(factors: Factors, name: str, rows: torch.Tensor | None, columns: torch.Tensor | None) -> torch.Tensor:
    """Lambda + lambda over the kept eigenvectors (None: all), made when used: held for every
    layer at once, it would be as large as the tracked weights."""
    lambdas = factors.lambdas[name] if rows is None else factors.lambdas[name][rows]
    return (lambdas if columns is None else lambdas[:, columns]) + factors.damping[name]


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
    factors = factors.restricted([layer.name for layer in lm.layers]).to(lm.device, lm.accumulate_dtype)
    proj = projection.to(lm.device, lm.accumulate_dtype) if projection is not None else None
    # Rotating back out of the eigenbasis and projecting (with the dual of the documents'
    # projection, so that inner products with them estimate the score) compose into one pair.
    # A principal projection reads only its kept eigenvectors: only those are rotated onto, and
    # the pair is then diagonal (its dual is those eigenvectors scaled), applied elementwise
    # instead of as two k x k products per query.
    diagonal = proj is not None and proj.basis == "principal"
    QS, QA, kept, back_left, back_right = {}, {}, {}, {}, {}
    for name in factors.layers:
        rows = None if proj is None else proj.kept_out.get(name)
        columns = None if proj is None else proj.kept_in.get(name)
        kept[name] = rows, columns
        QS[name] = factors.QS[name] if rows is None else factors.QS[name][:, rows]
        QA[name] = factors.QA[name] if columns is None else factors.QA[name][:, columns]
        out = None if proj is None else proj.dual_out[name]
        in_ = None if proj is None else proj.dual_in[name]
        if diagonal:  # diag(dual @ Q_kept): the dual's scales
            back_left[name], back_right[name] = (out * QS[name].T).sum(dim=1), (in_ * QA[name].T).sum(dim=1)
        else:
            back_left[name] = QS[name] if out is None else out @ QS[name]
            back_right[name] = QA[name] if in_ is None else in_ @ QA[name]
    left: dict[str, list[torch.Tensor]] = {layer.name: [] for layer in lm.layers}
    right: dict[str, list[torch.Tensor]] = {layer.name: [] for layer in lm.layers}
    logprobs = []
    pad = lm.pad_token_id
    for _, batch in batches(sequences, batch_size, pad, first_target=completion_starts):
        cap = capture(lm, batch, "data")
        logprobs.append(-cap.losses.double().cpu())
        for name in left:
            scaled = rotated_gradients(cap.a[name], cap.g[name], QA[name], QS[name]) / _denominator(
                factors, name, *kept[name]
            )
            if diagonal:
                X = scaled * back_left[name][:, None] * back_right[name]
            else:
                X = back_left[name] @ scaled @ back_right[name].T
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
