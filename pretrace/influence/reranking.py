"""Two-stage retrieval: stored (projected, factored) scores choose each query's candidates over the
whole corpus, and exact EK-FAC scores are computed for those candidates only.

The candidates are each query's top and bottom k documents by stored score, merged over every
shard (`pretrace.analyses.shard_statistics.merge_top_documents`). The second stage streams just their documents
through the model with dense, unprojected query gradients, so its cost is that of at most
2 x Q x k documents however large the corpus; within the candidates the order is then exact.
What it can miss is a document the stored scores did not rank among the k.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import polars as pl
import pyarrow as pa
import torch

from pretrace.influence.ekfac import Factors
from pretrace.influence.scores import EXACT_QUERY_BYTES, exact_scores, query_chunks
from pretrace.inputs.query_file import Query
from pretrace.model.adapter import LoadedModel

RERANK_SCHEMA = pa.schema(
    [
        ("query_id", pa.string()),
        ("side", pa.string()),
        ("shard", pa.string()),
        ("doc_id", pa.string()),
        ("stored_rank", pa.int32()),
        ("stored_score", pa.float64()),
        ("exact_rank", pa.int32()),
        ("exact_score", pa.float64()),
    ]
)
"""One row per candidate: its rank and score by stored scores, and by exact ones (rank 1 = the
highest score on side "top", the lowest on side "bottom")."""


def candidates_of(top: pa.Table) -> pa.Table:
    """The candidates of merged top lists (`pretrace.analyses.shard_statistics.TOP_SCHEMA`, global ranks), as the
    first columns of `RERANK_SCHEMA`."""
    return pa.table(
        {
            "query_id": top.column("query_id"),
            "side": top.column("side"),
            "shard": top.column("shard"),
            "doc_id": top.column("doc_id"),
            "stored_rank": top.column("rank").cast(pa.int32()),
            "stored_score": top.column("score").cast(pa.float64()),
        }
    )


def rerank(
    lm: LoadedModel,
    factors: Factors,
    queries: Sequence[Query],
    chosen: pa.Table,
    tokens: Callable[[str, str], Sequence[int]],
    *,
    batch_size: int = 8,
    progress: Callable[[int], None] | None = None,
    budget: int = EXACT_QUERY_BYTES,
    groups: int = 1,
) -> pa.Table:
    """Exact scores of each query's candidates (`candidates_of`), ranked by them per side (ties:
    the stored rank). ``tokens(shard, doc_id)``: a document's token ids. Queries go in chunks
    whose dense gradients fit ``budget`` bytes, each streaming only its own candidates' documents
    (`rerank_passes` says how many documents that is)."""
    pairs = _pairs(chosen)
    exact = np.full(len(pairs), np.nan)
    for chunk, documents, rows in _passes(lm, queries, pairs, budget):
        scores = (
            exact_scores(
                lm,
                factors,
                [queries[i] for i in chunk],
                [tokens(shard, doc) for shard, doc in documents],
                batch_size=batch_size,
                progress=progress,
                budget=budget,
                groups=groups,
            )
            .double()
            .numpy()
        )
        column = {document: j for j, document in enumerate(documents)}
        for q, i in rows:  # only the candidate pairs, not chunk x documents
            exact[i] = scores[q - chunk.start, column[pairs[i][1:]]]
    return _ranked(chosen, pa.array(exact, pa.float64()), order=[query.id for query in queries])


def rerank_passes(lm: LoadedModel, queries: Sequence[Query], chosen: pa.Table, budget: int = EXACT_QUERY_BYTES) -> int:
    """How many documents `rerank` streams (for progress): each chunk's candidates, once."""
    return sum(len(documents) for _, documents, _ in _passes(lm, queries, _pairs(chosen), budget))


def _pairs(chosen: pa.Table) -> list[tuple[str, str, str]]:
    """(query_id, shard, doc_id) of each candidate row."""
    return list(zip(*(chosen.column(name).to_pylist() for name in ("query_id", "shard", "doc_id"))))


def _passes(
    lm: LoadedModel, queries: Sequence[Query], pairs: list[tuple[str, str, str]], budget: int
) -> list[tuple[range, list[tuple[str, str]], list[tuple[int, int]]]]:
    """Per chunk of queries (`query_chunks`): the distinct documents among their candidates, and
    (query index, pair index) of each of their candidate pairs."""
    index = {query.id: q for q, query in enumerate(queries)}
    of_query: dict[int, list[int]] = {}
    for i, (query_id, _, _) in enumerate(pairs):
        of_query.setdefault(index[query_id], []).append(i)
    passes = []
    for chunk in query_chunks(lm, len(queries), budget):
        rows = [(q, i) for q in chunk for i in of_query.get(q, [])]
        passes.append((chunk, list(dict.fromkeys(pairs[i][1:] for _, i in rows)), rows))
    return passes


def already_exact(chosen: pa.Table, order: Sequence[str]) -> pa.Table:
    """The candidates when stored scores are exact: nothing to recompute, the order stands
    (queries in ``order``, as `rerank` puts them)."""
    return _ranked(chosen, chosen.column("stored_score"), order=list(order))


def agreement_k(rerank_k: int) -> int:
    """The k at which `order_agreement` says something for ``rerank_k`` candidates: 10, or half
    the candidates when there are fewer than 20 (with every candidate in both top k it is 1)."""
    return max(1, min(10, rerank_k // 2))


def _ranked(chosen: pa.Table, exact: pa.Array, order: list[str]) -> pa.Table:
    position = {query_id: i for i, query_id in enumerate(order)}
    frame = pl.from_arrow(chosen.append_column("exact_score", exact))
    ranked = (
        frame.with_columns(
            _q=pl.col("query_id").replace_strict(position, return_dtype=pl.Int64),
            _key=pl.when(pl.col("side") == "top").then(-pl.col("exact_score")).otherwise(pl.col("exact_score")),
        )
        .sort(["_q", "side", "_key", "stored_rank"], descending=[False, True, False, False])
        .with_columns(exact_rank=pl.int_range(1, pl.len() + 1).over(["query_id", "side"]).cast(pl.Int32))
    )
    return ranked.select(RERANK_SCHEMA.names).to_arrow().cast(RERANK_SCHEMA)


def order_agreement(reranked: pa.Table, k: int = 10) -> float | None:
    """Mean over queries and sides of the share of the exact top ``k`` among the candidates that
    the stored order put in its top ``k`` too (1: re-ranking changed no top-``k`` set); None
    without candidates."""
    frame = pl.from_arrow(reranked)
    if frame.is_empty():
        return None
    shares = (
        frame.filter(pl.col("exact_rank") <= k)
        .group_by(["query_id", "side"])
        .agg((pl.col("stored_rank") <= k).mean().alias("share"))
    )
    return float(shares["share"].mean())


def candidates(stored: torch.Tensor, k: int) -> torch.Tensor:
    """(Q, min(k, N)) indices of each query's k highest stored scores, best first (ties: lower index)."""
    order = torch.sort(stored, dim=1, descending=True, stable=True).indices
    return order[:, :k]


def recall(stored: torch.Tensor, exact: torch.Tensor, k: int, top: int) -> float:
    """Mean over queries of the share of the exact top ``top`` that two-stage retrieval with ``k``
    candidates returns (it returns every one the stored scores put among the k)."""
    chosen = candidates(stored, k).numpy()
    best = candidates(exact, top).numpy()
    return float(np.mean([len(set(c) & set(b)) / len(b) for c, b in zip(chosen, best)]))
