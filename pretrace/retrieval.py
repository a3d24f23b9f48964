"""Two-stage retrieval: stored (projected, factored) scores choose each query's candidates over the
whole corpus, and exact EK-FAC scores are computed for those candidates only.

The second stage streams just the candidates' documents through the model with dense,
unprojected query gradients, so its cost is that of Q x K documents however large the corpus;
within the candidates, the order is then exact. What it can miss is a document the stored
scores did not rank among the K.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pyarrow as pa
import torch

from .ekfac import Factors
from .model import LoadedModel
from .queries import query_gradients_from_tokens
from .scores import stream_scores

RERANK_SCHEMA = pa.schema([
    ("query_id", pa.string()), ("shard", pa.string()), ("doc_id", pa.string()), ("stored_rank", pa.int32()),
    ("stored_score", pa.float64()), ("exact_rank", pa.int32()), ("exact_score", pa.float64())])


def candidates(stored: torch.Tensor, k: int) -> torch.Tensor:
    """(Q, min(k, N)) indices of each query's k highest stored scores, best first (ties: lower index)."""
    order = torch.sort(stored, dim=1, descending=True, stable=True).indices
    return order[:, :k]


def rerank(lm: LoadedModel, factors: Factors, queries: tuple[Sequence[Sequence[int]], Sequence[int], Sequence[str]],
           chosen: pa.Table, tokens: Callable[[str, str], Sequence[int]], *, batch_size: int = 8,
           progress: Callable[[int], None] | None = None) -> pa.Table:
    """Exact scores of each query's candidates (`chosen`: query_id, shard, doc_id, stored_rank,
    stored_score), ranked by them (ties: the stored rank). ``queries``: token ids, completion
    starts and ids; ``tokens(shard, doc_id)``: a document's token ids. Every candidate document is
    streamed once, for all queries."""
    sequences, starts, ids = queries
    documents = list(dict.fromkeys(zip(chosen.column("shard").to_pylist(), chosen.column("doc_id").to_pylist())))
    exact_queries = query_gradients_from_tokens(lm, factors, sequences, starts, ids, batch_size=batch_size)
    exact = stream_scores(lm, exact_queries, [tokens(shard, doc) for shard, doc in documents], batch_size=batch_size,
                          progress=progress).double().numpy()
    row = {query_id: i for i, query_id in enumerate(ids)}
    column = {document: j for j, document in enumerate(documents)}
    rows = chosen.to_pylist()
    for r in rows:
        r["exact_score"] = float(exact[row[r["query_id"]], column[(r["shard"], r["doc_id"])]])
    rows.sort(key=lambda r: (row[r["query_id"]], -r["exact_score"], r["stored_rank"]))
    rank, previous = 0, None
    for r in rows:
        rank = rank + 1 if r["query_id"] == previous else 1
        r["exact_rank"], previous = rank, r["query_id"]
    return pa.Table.from_pylist(rows, schema=RERANK_SCHEMA)


def recall(stored: torch.Tensor, exact: torch.Tensor, k: int, top: int) -> float:
    """Mean over queries of the share of the exact top ``top`` that two-stage retrieval with ``k``
    candidates returns (it returns every one the stored scores put among the k)."""
    chosen = candidates(stored, k).numpy()
    best = candidates(exact, top).numpy()
    return float(np.mean([len(set(c) & set(b)) / len(b) for c, b in zip(chosen, best)]))
