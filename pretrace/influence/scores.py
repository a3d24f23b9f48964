"""Query x document influence: a matrix product of stored gradients, or streamed from the model.

score(q, d) = sum over layers of <H^-1 grad(-log p_q), grad L_d>. Positive: upweighting d in
training raises the probability of q's completion.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from pretrace.errors import InputError, NumericalError
from pretrace.influence.blocked_products import blocked_inner_products
from pretrace.influence.capture import Captured, all_finite
from pretrace.influence.document_gradients import (
    DocumentGradients,
    iter_captures,
    layer_gradients,
    layer_tokens,
    unchecked_layer_gradients,
)
from pretrace.influence.ekfac import Factors
from pretrace.influence.layer_groups import layer_groups
from pretrace.influence.low_rank import captured_inner_products, inner_products
from pretrace.influence.projection import KroneckerProjection
from pretrace.influence.query_gradients import QueryGradients, compute_query_gradients
from pretrace.inputs.query_file import Query
from pretrace.model.adapter import LoadedModel


def _flat_queries(queries: QueryGradients, device: torch.device) -> dict[str, torch.Tensor]:
    return {name: queries.dense(name).flatten(1).to(device) for name in queries.layers}


def _check_compatible(queries: QueryGradients, layers: Sequence[str], projection: dict | None) -> None:
    if list(queries.layers) != list(layers):
        raise InputError(
            f"query gradients track layers {queries.layers} but document gradients track {list(layers)}; "
            "recompute one of them with the same layer patterns"
        )
    if queries.projection != projection:
        raise InputError(
            f"query gradients were projected with {queries.projection} but documents with {projection}; "
            "both sides must use the same projection (sizes and seed)"
        )


def score_matrix(queries: QueryGradients, documents: DocumentGradients) -> torch.Tensor:
    """(Q, N) influence from stored gradients, summed over layers in float32. Factored document
    gradients (`document_rank`) are scored from their factors (`pretrace.influence.low_rank.inner_products`),
    never made dense all at once; quantized ones are made float32 a layer at a time."""
    _check_compatible(queries, list(documents.grads), documents.projection)
    total = torch.zeros(len(queries.ids), len(documents.ids), dtype=torch.float32)
    if documents.rank is None:
        for name, q in _flat_queries(queries, torch.device("cpu")).items():
            total += q @ documents.dense(name).flatten(1).to(q).T
        return total
    for name in queries.layers:
        query = (queries.left[name].float(), None if queries.rank is None else queries.right[name].float())
        total += inner_products(query, documents.factors(name))
    return total


LayerScorer = Callable[[Captured], torch.Tensor]


def _layer_scorers(
    queries: QueryGradients, names: Sequence[str], device: torch.device, projection: KroneckerProjection | None
) -> list[LayerScorer]:
    """Per layer, the (Q, B) scores of one batch's captures, with the layer's query gradients
    moved to ``device`` once: products with dense query gradients (`blocked_inner_products`), or
    with rank-r ones the factored per-token products (`captured_inner_products`). The document
    gradients are not checked one by one: `stream_scores` checks each batch's scores, which any
    inf or nan reaches."""
    if queries.rank is None:
        dense = {n: queries.dense(n).to(device) for n in names}
        return [
            lambda cap, n=n: blocked_inner_products(
                dense[n], unchecked_layer_gradients(cap, n, projection).to(dense[n])
            )
            for n in names
        ]
    factored = {
        n: (queries.left[n].to(device, torch.float32), queries.right[n].to(device, torch.float32)) for n in names
    }
    return [lambda cap, n=n: captured_inner_products(factored[n], *layer_tokens(cap, n, projection)) for n in names]


def _check_scores(
    block: torch.Tensor, cap: Captured, names: Sequence[str], index: range, projection: KroneckerProjection | None
) -> None:
    """One check per batch instead of one per layer: a non-finite document gradient makes its
    scores non-finite, and then the layer is found and named as `layer_gradients` names it."""
    if all_finite(block):
        return
    for name in names:
        layer_gradients(cap, name, projection)
    raise NumericalError(
        f"influence scores of documents {index.start}..{index.stop - 1} overflow float32 although their "
        "gradients are finite; check the query gradients and the damping of the factors"
    )


def stream_scores(
    lm: LoadedModel,
    queries: QueryGradients,
    sequences: Sequence[Sequence[int]],
    *,
    projection: KroneckerProjection | None = None,
    batch_size: int = 8,
    progress: Callable[[int], None] | None = None,
    groups: int = 1,
) -> torch.Tensor:
    """(Q, N) influence computed batch by batch from the model, storing no document gradient.

    Memory is bounded by one layer's gradients of one batch, the query gradients and the (Q, N)
    result, so every query is scored in a single pass over the documents. Rank-r query gradients
    (`query_rank`) stay factored: each layer's score comes from the per-token activations and
    gradients (`captured_inner_products`), with neither a dense query nor a document gradient
    formed. With ``groups`` > 1 each layer group takes its own pass (`pretrace.influence.layer_groups`):
    its query gradients alone are on the device, and the per-group scores add up to the same total.
    """
    _check_compatible(
        queries, [layer.name for layer in lm.layers], None if projection is None else projection.describe()
    )
    scores = torch.zeros(len(queries.ids), len(sequences), dtype=torch.float32)
    for group in layer_groups(lm, groups):
        names = [layer.name for layer in group.layers]
        # the group's documents' matrices alone (`KroneckerProjection.for_documents`), never the factors
        proj = None if projection is None else projection.for_documents(names, lm.device, lm.accumulate_dtype)
        scorers = _layer_scorers(queries, names, lm.device, proj)
        for index, cap in iter_captures(group, sequences, batch_size=batch_size, progress=progress):
            block = torch.zeros(len(queries.ids), len(index), dtype=torch.float32, device=lm.device)
            for score in scorers:
                block += score(cap)
            _check_scores(block, cap, names, index, proj)
            scores[:, index.start : index.stop] += block.cpu()
    return scores


EXACT_QUERY_BYTES = 2**30
"""Dense query gradients held at once when scoring exactly (the projection check, two-stage
retrieval): more queries are scored in further passes. One dense query gradient is as large as
the tracked weights (17 GB in float32 for Llama-2-7B's MLPs), so at that size it is one query a pass."""


def query_chunks(lm: LoadedModel, n_queries: int, budget: int = EXACT_QUERY_BYTES) -> list[range]:
    """Consecutive ranges of queries whose dense gradients fit in ``budget`` bytes (at least one)."""
    per_query = sum(d_out * d_in for d_out, d_in in lm.layer_shapes().values()) * lm.accumulate_dtype.itemsize
    size = max(1, budget // per_query)
    return [range(start, min(start + size, n_queries)) for start in range(0, n_queries, size)]


def exact_scores(
    lm: LoadedModel,
    factors: Factors,
    queries: Sequence[Query],
    sequences: Sequence[Sequence[int]],
    *,
    batch_size: int = 8,
    progress: Callable[[int], None] | None = None,
    budget: int = EXACT_QUERY_BYTES,
    groups: int = 1,
) -> torch.Tensor:
    """(Q, N) exact EK-FAC scores of a few documents, whatever the stored approximation: dense,
    unprojected preconditioned query gradients against gradients streamed from the model (what
    approximate stored scores are checked and re-ranked against); the documents are streamed
    once per chunk of queries that fits ``budget`` (`query_chunks`), and per layer group."""
    scores = torch.zeros(len(queries), len(sequences), dtype=torch.float32)
    for chunk in query_chunks(lm, len(queries), budget):
        # one group: the dense gradients stay on the device they are scored on (no round trip to the host)
        dense = compute_query_gradients(
            lm,
            factors,
            [queries[i] for i in chunk],
            batch_size=batch_size,
            groups=groups,
            gather=lm.device if groups == 1 else "cpu",
        )
        scores[chunk.start : chunk.stop] = stream_scores(
            lm, dense, sequences, batch_size=batch_size, progress=progress, groups=groups
        )
    return scores
