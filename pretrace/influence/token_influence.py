"""Which tokens of a document carry its influence on a query: the per-token terms of its score.

A tracked layer's gradient of a document's loss is sum_t g_t a_t^T (a: the layer's input at
position t, g: the loss gradient at its output there), so the document's score against a query's
preconditioned gradient Q is sum_t sum_layers g_t^T Q a_t: one term per position, and the terms
sum to the score exactly (through a Kronecker projection too, with P_out g_t and P_in a_t). As in
Grosse et al. (2023), the term of position t is shown on the token at t. A term is not that
token's causal share (g_t carries the loss of every later token), but it says where in a long
document the influence sits, and only the documents shown are recomputed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from pretrace.influence.capture import capture
from pretrace.influence.projection import KroneckerProjection
from pretrace.influence.query_gradients import QueryGradients
from pretrace.inputs.batching import batches
from pretrace.model.adapter import LoadedModel


@dataclass(frozen=True)
class Pair:
    """One (query, document) whose score is decomposed: the query's row in the query gradients
    and the document's token ids."""

    query: int
    tokens: tuple[int, ...]


def token_contributions(
    lm: LoadedModel,
    queries: QueryGradients,
    pairs: Sequence[Pair],
    *,
    projection: KroneckerProjection | None = None,
    batch_size: int = 8,
    progress: Callable[[int], None] | None = None,
) -> list[np.ndarray]:
    """Per pair, one float64 term per token of its document; each pair's terms sum to its score.

    Each distinct document is run through the model once, whatever the number of queries it is
    shown for.
    """
    documents = list(dict.fromkeys(p.tokens for p in pairs))
    wanted: dict[tuple[int, ...], set[int]] = {}
    for p in pairs:
        wanted.setdefault(p.tokens, set()).add(p.query)
    proj = projection.to(lm.device, lm.accumulate_dtype) if projection is not None else None
    dense = {name: queries.dense(name).to(lm.device, lm.accumulate_dtype) for name in queries.layers}
    terms: dict[tuple[tuple[int, ...], int], np.ndarray] = {}
    for index, batch in batches(documents, batch_size, lm.pad_token_id):
        captured = capture(lm, batch, "data")
        for row, doc in enumerate(documents[i] for i in index):
            rows = sorted(wanted[doc])
            total = torch.zeros(len(rows), len(doc), dtype=torch.float64, device=lm.device)
            for layer in lm.layers:
                a, g = (
                    captured.a[layer.name][row : row + 1, : len(doc)],
                    captured.g[layer.name][row : row + 1, : len(doc)],
                )
                a, g = a.to(lm.accumulate_dtype), g.to(lm.accumulate_dtype)
                if proj is not None:
                    a, g = proj.project_tokens(layer.name, a, g)
                # term[q, t] = g_t^T Q_q a_t, for the queries shown with this document
                total += torch.einsum("to,qoi,ti->qt", g[0], dense[layer.name][rows], a[0]).double()
            for q, values in zip(rows, total.cpu().numpy()):
                terms[(doc, q)] = values
        if progress is not None:
            progress(len(index))
    return [terms[(p.tokens, p.query)] for p in pairs]


TOKEN_DOCUMENTS = 3
"""Documents per query and side whose score is decomposed into tokens for the report."""

TOKEN_SCHEMA = pa.schema(
    [
        ("query_id", pa.string()),
        ("side", pa.string()),
        ("rank", pa.int32()),
        ("shard", pa.string()),
        ("doc_id", pa.string()),
        ("score", pa.float32()),
        ("token_sum", pa.float64()),
        ("tokens", pa.list_(pa.string())),
        ("terms", pa.list_(pa.float32())),
    ]
)


def token_influence_table(
    lm: LoadedModel,
    queries: QueryGradients,
    top: pa.Table,
    tokens_of: Callable[[str, str], Sequence[int]],
    *,
    per_side: int = TOKEN_DOCUMENTS,
    projection: KroneckerProjection | None = None,
    batch_size: int = 8,
    progress: Callable[[int], None] | None = None,
) -> pa.Table:
    """The token terms of each query's ``per_side`` top and bottom documents (merged top lists;
    ``tokens_of(shard, doc_id)`` gives a document's token ids), one row per shown document."""
    row_of = {q: i for i, q in enumerate(queries.ids)}
    shown = [
        r
        for r in top.sort_by([("query_id", "ascending"), ("side", "descending"), ("rank", "ascending")]).to_pylist()
        if r["rank"] <= per_side and r["query_id"] in row_of
    ]
    pairs = [Pair(row_of[r["query_id"]], tuple(tokens_of(r["shard"], r["doc_id"]))) for r in shown]
    terms = token_contributions(lm, queries, pairs, projection=projection, batch_size=batch_size, progress=progress)
    decode = (
        (lambda ids: [lm.tokenizer.decode([i]) for i in ids])
        if lm.tokenizer is not None
        else (lambda ids: [str(i) for i in ids])
    )
    rows = {name: [] for name in TOKEN_SCHEMA.names}
    for r, pair, values in zip(shown, pairs, terms):
        for name in ("query_id", "side", "rank", "shard", "doc_id", "score"):
            rows[name].append(r[name])
        rows["token_sum"].append(float(values.sum()))
        rows["tokens"].append(decode(pair.tokens))
        rows["terms"].append(values.astype(np.float32).tolist())
    return pa.table(rows, schema=TOKEN_SCHEMA)
