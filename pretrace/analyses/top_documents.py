"""Each query's top and bottom documents by score, with their source, an excerpt and answer flags.

Per shard the k most extreme documents of each side; shards' lists merge into the corpus-wide
ones exactly (ties broken by doc_id, so selection and merge are deterministic).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import polars as pl
import pyarrow as pa
import torch

from pretrace.analyses.answers import excerpt, find_answer, normalize_answer
from pretrace.errors import InputError

TOP_K = 50

TOP_SCHEMA = pa.schema(
    [
        ("query_id", pa.string()),
        ("side", pa.string()),  # "top" (largest scores) or "bottom" (smallest)
        ("rank", pa.int32()),  # 1 = most extreme
        ("doc_id", pa.string()),
        ("shard", pa.string()),  # the corpus file's partition: ids need only be unique within a file
        ("source", pa.string()),
        ("score", pa.float32()),
        ("excerpt", pa.string()),  # about 300 characters, around the answer (or an intermediate result)
        ("answer_found", pa.bool_()),  # null when the query has no answer
        ("intermediates_found", pa.list_(pa.bool_())),  # one flag per intermediate result
    ]
)


def score_array(scores: torch.Tensor | np.ndarray) -> np.ndarray:
    """A checked float32 (queries, documents) matrix: named errors instead of wrong top lists."""
    s = scores.detach().cpu().float().numpy() if isinstance(scores, torch.Tensor) else np.asarray(scores, np.float32)
    if s.ndim != 2:
        raise InputError(f"expected a (queries, documents) score matrix, got shape {s.shape}")
    if not np.isfinite(s).all():
        raise InputError("the score matrix holds NaN or infinite values")
    return s


def query_targets(query_ids: list[str], queries: pa.Table | None) -> list[list[str]]:
    """Per query id, its normalized [answer, *intermediates] ("" where it has no answer)."""
    if queries is None:
        return [[] for _ in query_ids]
    rows = {r["id"]: r for r in queries.to_pylist()}
    out = []
    for q in query_ids:
        row = rows.get(q, {})
        inter = [normalize_answer(x) for x in (row.get("intermediates") or [])]
        out.append([normalize_answer(row.get("answer"))] + [x for x in inter if x])
    return out


def top_documents(
    query_ids: list[str],
    doc_ids: list[str],
    scores: torch.Tensor | np.ndarray,
    k: int = TOP_K,
    *,
    sources: list[str] | None = None,
    texts: list[str] | None = None,
    targets: list[list[str]] | None = None,
    shard: str = "",
) -> pa.Table:
    """The k highest ('top') and k lowest ('bottom') scored documents of each query.

    Ties are broken by doc_id, so the selection (and its merge across shards) is deterministic.
    """
    return top_documents_of(
        query_ids, doc_ids, score_array(scores), k, sources=sources, texts=texts, targets=targets, shard=shard
    )


def top_documents_of(
    query_ids: list[str],
    doc_ids: list[str],
    s: np.ndarray,
    k: int,
    *,
    sources: list[str] | None,
    texts: list[str] | None,
    targets: list[list[str]] | None,
    shard: str = "",
) -> pa.Table:
    """:func:`top_documents` for a matrix :func:`score_array` already checked, so callers check it only once."""
    n = s.shape[1]
    k = min(k, n)
    rows: dict[str, list] = {name: [] for name in TOP_SCHEMA.names}
    if k == 0:
        return pa.table(rows, schema=TOP_SCHEMA)
    for q, query_id in enumerate(query_ids):
        answer, *intermediates = (targets[q] if targets else None) or [""]
        for side in ("top", "bottom"):
            picked = _extreme(s[q], doc_ids, k, largest=side == "top")
            for rank, i in enumerate(picked, start=1):
                text = texts[i] if texts is not None else ""
                rows["query_id"].append(query_id)
                rows["side"].append(side)
                rows["rank"].append(rank)
                rows["doc_id"].append(doc_ids[i])
                rows["shard"].append(shard)
                rows["source"].append(sources[i] if sources is not None else "unknown")
                rows["score"].append(float(s[q, i]))
                found = find_answer(text, answer) is not None if answer else None
                steps = [find_answer(text, x) is not None for x in intermediates]
                # the excerpt shows the answer, else the first intermediate result, else the start
                focus = answer if found else next((x for x, f in zip(intermediates, steps) if f), None)
                rows["excerpt"].append(excerpt(text, focus))
                rows["answer_found"].append(found)
                rows["intermediates_found"].append(steps)
    return pa.table(rows, schema=TOP_SCHEMA)


def _extreme(values: np.ndarray, doc_ids: list[str], k: int, largest: bool) -> np.ndarray:
    """Indices of the k largest (or smallest) values, ties broken by id, most extreme first."""
    n = values.size
    if largest:
        threshold = np.partition(values, n - k)[n - k]
        candidates = np.nonzero(values >= threshold)[0]
        key = -values[candidates]
    else:
        threshold = np.partition(values, k - 1)[k - 1]
        candidates = np.nonzero(values <= threshold)[0]
        key = values[candidates]
    ids = np.asarray([doc_ids[i] for i in candidates], dtype=str)  # only the candidates: k plus ties
    return candidates[np.lexsort((ids, key))[:k]]


def merge_top_documents(tables: Iterable[pa.Table], k: int) -> pa.Table:
    """Global top/bottom k from per-shard lists (each holding its shard's own top/bottom k)."""
    tables = [t for t in tables if t.num_rows]
    if not tables or k == 0:  # (polars' head(0) per group leaves a row of nulls per group)
        return TOP_SCHEMA.empty_table()
    merged = pl.from_arrow(pa.concat_tables([t.select(TOP_SCHEMA.names).cast(TOP_SCHEMA) for t in tables]))
    best = (
        merged.with_columns(key=pl.when(pl.col("side") == "top").then(-pl.col("score")).otherwise(pl.col("score")))
        .sort(["query_id", "side", "key", "doc_id", "shard"])
        .group_by(["query_id", "side"], maintain_order=True)
        .head(k)
        .with_columns(rank=pl.int_range(1, pl.len() + 1).over(["query_id", "side"]).cast(pl.Int32))
    )
    return best.select(TOP_SCHEMA.names).to_arrow().cast(TOP_SCHEMA)
