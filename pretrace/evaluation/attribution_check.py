"""The attribution check of a whole project: each query's top-k documents by influence, by k
random documents, by BM25, by gradient cosine and by raw-gradient dot product (identity),
each scored by its tail-patch gain (`pretrace.evaluation.tailpatch`).

Documents are named by (shard, doc_id): ids need only be unique within a corpus file.
The gradient rankings stream one shard's stored document gradients at a time, keeping each query's
running top-k, so memory follows one shard; BM25 indexes every document's text at once.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import polars as pl
import pyarrow as pa
import torch

from pretrace.errors import InputError
from pretrace.evaluation.normalised_influence import TINY, SelfInfluence, normalised_influence
from pretrace.evaluation.tailpatch import BM25Index, evaluate, summarize, top_k_random
from pretrace.influence.document_gradients import DocumentGradients, compute_document_gradients
from pretrace.influence.projection import FactorSource, KroneckerProjection
from pretrace.influence.query_gradients import QueryGradients
from pretrace.inputs.query_file import Query, encode_queries
from pretrace.model.adapter import LoadedModel

Key = tuple[str, str]  # (shard, doc_id)


@dataclass
class Documents:
    """The corpus as the check sees it: keys, token ids, text, `evidence` (the key of the
    fact a document states, from its record's `evidence` field, if any) and source (when the
    shards carry one: the rankings' source shares are read beside influence's), in one order."""

    keys: list[Key]
    tokens: list[list[int]]
    texts: list[str]
    evidence: list[str | None]
    sources: list[str] | None = None

    @classmethod
    def from_shards(cls, shards: Iterable[tuple[str, pa.Table]]) -> Documents:
        keys, tokens, texts, evidence, sources = [], [], [], [], []
        for shard, table in shards:
            keys += [(shard, d) for d in table.column("doc_id").to_pylist()]
            tokens += table.column("input_ids").to_pylist()
            texts += table.column("text").to_pylist()
            metas = table.column("meta").to_pylist() if "meta" in table.column_names else [None] * table.num_rows
            evidence += [_evidence(m) for m in metas]
            names = table.column("source").to_pylist() if "source" in table.column_names else [None] * table.num_rows
            sources += [name or "unknown" for name in names]
        return cls(keys, tokens, texts, evidence, sources)

    @cached_property
    def position(self) -> dict[Key, int]:
        """Each document's index in this order, by (shard, doc_id)."""
        return {key: i for i, key in enumerate(self.keys)}


def query_evidence(table: pa.Table, queries: list[Query]) -> list[str | None]:
    """Each query's `evidence` (from the queries table's `meta`), in the order of ``queries``."""
    by_id = dict(zip(table.column("id").to_pylist(), table.column("meta").to_pylist()))
    return [_evidence(by_id.get(q.id)) for q in queries]


def query_frequency(table: pa.Table, queries: list[Query]) -> list[int | None]:
    """Each query's `planted_frequency` (how many times the corpus states its evidence, from the
    queries table's `meta`), in the order of ``queries``; None where it is not given."""
    by_id = dict(zip(table.column("id").to_pylist(), table.column("meta").to_pylist()))
    return [_frequency(by_id.get(q.id)) for q in queries]


def _evidence(meta: str | None) -> str | None:
    value = json.loads(meta).get("evidence") if meta else None
    return value if isinstance(value, str) else None


def _frequency(meta: str | None) -> int | None:
    value = json.loads(meta).get("planted_frequency") if meta else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def influence_ranking(top: pa.Table, queries: list[Query], documents: Documents, k: int) -> list[list[int]]:
    """Each query's k most positively influential documents (the merged top lists)."""
    position = documents.position
    best: dict[str, list[int]] = {q.id: [] for q in queries}
    for row in top.sort_by([("query_id", "ascending"), ("rank", "ascending")]).to_pylist():
        if row["side"] == "top" and row["query_id"] in best and len(best[row["query_id"]]) < k:
            best[row["query_id"]].append(position[(row["shard"], row["doc_id"])])
    return [best[q.id] for q in queries]


def gradient_rankings(
    lm: LoadedModel,
    queries: list[Query],
    shard_gradients: Iterable[tuple[str, DocumentGradients]],
    documents: Documents,
    k: int,
    projection: KroneckerProjection | None,
    batch_size: int,
    encoded: tuple[list[list[int]], list[int]] | None = None,
    preconditioned: QueryGradients | None = None,
    self_influence: SelfInfluence | None = None,
) -> dict[str, list[list[int]]]:
    """Each query's k documents of largest gradient cosine ("cosine", in the space of the stored
    document gradients: raw, or whitened by a projection in the eigenbasis) and of largest raw
    gradient dot product ("identity": influence without preconditioning; such a projection's dual
    takes the query back to raw inner products), over every shard in one pass. ``encoded``: the
    queries' `encode_queries`, if the caller has it. With the stored ``preconditioned`` query
    gradients, also gradient-normalised influence (`pretrace.evaluation.normalised_influence`):
    unit-normalised, and RelatIF where ``self_influence`` can be computed from the store."""
    sequences, starts = encoded or encode_queries(queries, lm.tokenizer, lm.max_context)

    def query_side(side: KroneckerProjection | None) -> torch.Tensor:
        grads = compute_document_gradients(
            lm, sequences, [q.id for q in queries], projection=side, batch_size=batch_size, first_target=starts
        ).grads
        return torch.cat([grads[name].flatten(1).double() for name in layers], dim=1)

    layers = lm_layers(lm)
    q = query_side(projection)
    q_raw = q if projection is None or projection.basis == "raw" else query_side(projection.dual())
    qp = None if preconditioned is None else _preconditioned_rows(preconditioned, queries, layers)
    position = documents.position
    heaps: dict[str, list[list[tuple[float, int]]]] = {m: [[] for _ in queries] for m in ("cosine", "identity")}
    for shard, grads in shard_gradients:
        if set(grads.grads) != set(layers):
            raise InputError(f"document_gradients[{shard}] tracks other layers than the model; recompute it")
        d = torch.cat([grads.dense(name).flatten(1).double() for name in layers], dim=1)
        norms = d.norm(dim=1)
        values = {
            "cosine": q @ d.T / (q.norm(dim=1, keepdim=True) * norms).clamp_min(TINY),
            "identity": q_raw @ d.T,
        }
        if qp is not None:
            selfs = None if self_influence is None else self_influence(grads)
            values |= normalised_influence(qp @ d.T, q.norm(dim=1), norms, selfs)
        index = [position[(shard, doc_id)] for doc_id in grads.ids]
        for method, matrix in values.items():
            for row, heap in zip(matrix.numpy(), heaps.setdefault(method, [[] for _ in queries])):
                _keep_top(heap, row, index, k)
    return {method: [[-i for _, i in sorted(heap, reverse=True)] for heap in found] for method, found in heaps.items()}


def _preconditioned_rows(stored: QueryGradients, queries: list[Query], layers: list[str]) -> torch.Tensor:
    """The stored preconditioned gradients of ``queries`` (by id), layers in ``layers`` order, as rows."""
    if set(stored.layers) != set(layers):
        raise InputError("query_gradients track other layers than the model; recompute them")
    row = {query_id: i for i, query_id in enumerate(stored.ids)}
    missing = [x.id for x in queries if x.id not in row]
    if missing:
        raise InputError(f"query_gradients lack queries {missing[:5]}; recompute them")
    picked = [row[x.id] for x in queries]
    return torch.cat([stored.dense(name)[picked].flatten(1).double() for name in layers], dim=1)


def _keep_top(heap: list[tuple[float, int]], row: np.ndarray, index: list[int], k: int) -> None:
    """Merge one shard's values into a query's running top k (ties: the earlier document)."""
    for j in np.argsort(-row, kind="stable")[:k]:
        item = (float(row[j]), -index[j])
        if len(heap) < k:
            heapq.heappush(heap, item)
        else:
            heapq.heappushpop(heap, item)


RANKING_SCHEMA = pa.schema(
    [
        ("query_id", pa.string()),
        ("method", pa.string()),
        ("rank", pa.int32()),
        ("shard", pa.string()),
        ("doc_id", pa.string()),
        ("source", pa.string()),
    ]
)


def ranking_table(query_ids: list[str], documents: Documents, rankings: dict[str, list[list[int]]]) -> pa.Table:
    """Every method's top k per query as rows (rank 1 first), with each document's source: the
    report sets the baselines' source shares beside influence's, on the same queries and k."""
    rows: dict[str, list] = {name: [] for name in RANKING_SCHEMA.names}
    sources = documents.sources or ["unknown"] * len(documents.keys)
    for method, ranking in rankings.items():
        for query_id, chosen in zip(query_ids, ranking):
            for rank, i in enumerate(chosen, start=1):
                rows["query_id"].append(query_id)
                rows["method"].append(method)
                rows["rank"].append(rank)
                rows["shard"].append(documents.keys[i][0])
                rows["doc_id"].append(documents.keys[i][1])
                rows["source"].append(sources[i])
    return pa.table(rows, schema=RANKING_SCHEMA)


RETRIEVAL_SCHEMA = pa.schema(
    [
        ("query_id", pa.string()),
        ("kind", pa.string()),
        ("method", pa.string()),
        ("evidence_documents", pa.int32()),
        ("recall_at_k", pa.float64()),
        ("reciprocal_rank", pa.float64()),
    ]
)


def evidence_retrieval(
    query_evidence: list[str | None],
    query_ids: list[str],
    documents: Documents,
    rankings: dict[str, list[list[int]]],
    kinds: list[str],
) -> pa.Table:
    """For each query that names its `evidence`, where each method ranks the documents that
    state it: the share of them in its top k, and 1 / rank of the first (0 if none is in it);
    with the query's kind (planted facts and planted reasoning are read apart)."""
    stating: dict[str, set[int]] = {}
    for i, key in enumerate(documents.evidence):
        if key is not None:
            stating.setdefault(key, set()).add(i)
    rows: dict[str, list] = {name: [] for name in RETRIEVAL_SCHEMA.names}
    for q, (query_id, key) in enumerate(zip(query_ids, query_evidence)):
        relevant = stating.get(key or "", set())
        if not relevant:
            continue
        for method, ranking in rankings.items():
            ranks = [r for r, i in enumerate(ranking[q], start=1) if i in relevant]
            rows["query_id"].append(query_id)
            rows["kind"].append(kinds[q])
            rows["method"].append(method)
            rows["evidence_documents"].append(len(relevant))
            rows["recall_at_k"].append(len(ranks) / len(relevant))
            rows["reciprocal_rank"].append(1.0 / ranks[0] if ranks else 0.0)
    return pa.table(rows, schema=RETRIEVAL_SCHEMA)


EVIDENCE_SCHEMA = pa.schema(
    [
        ("query_id", pa.string()),
        ("frequency", pa.int32()),
        ("shard", pa.string()),
        ("doc_id", pa.string()),
    ]
)


def evidence_documents(
    query_ids: list[str],
    query_evidence: list[str | None],
    documents: Documents,
    query_frequency: list[int | None] | None = None,
) -> pa.Table:
    """For each query that names its `evidence`, every document stating it, with how often the
    corpus states it (the query's `planted_frequency`, else the number of such documents): what
    the report's positive control of the answer search (`pretrace.analyses.answer_detection`)
    needs to know where retrieval happened."""
    stating: dict[str, list[int]] = {}
    for i, key in enumerate(documents.evidence):
        if key is not None:
            stating.setdefault(key, []).append(i)
    frequencies = query_frequency or [None] * len(query_ids)
    rows: dict[str, list] = {name: [] for name in EVIDENCE_SCHEMA.names}
    for query_id, key, frequency in zip(query_ids, query_evidence, frequencies):
        relevant = stating.get(key or "", [])
        for i in relevant:
            rows["query_id"].append(query_id)
            rows["frequency"].append(frequency if frequency is not None else len(relevant))
            rows["shard"].append(documents.keys[i][0])
            rows["doc_id"].append(documents.keys[i][1])
    return pa.table(rows, schema=EVIDENCE_SCHEMA)


def summarize_retrieval(retrieval: pa.Table) -> pa.Table:
    """Mean recall@k and MRR per method and query kind (kinds never pooled), over all the kind's
    queries with evidence and by how many documents state their evidence (evidence_documents 0 = all)."""
    frame = pl.from_arrow(retrieval)
    if frame.is_empty():
        return pa.table(
            {
                "method": pa.array([], pa.string()),
                "kind": pa.array([], pa.string()),
                "evidence_documents": pa.array([], pa.int32()),
                "queries": pa.array([], pa.int64()),
                "recall_at_k": pa.array([], pa.float64()),
                "mrr": pa.array([], pa.float64()),
            }
        )
    methods = list(dict.fromkeys(frame["method"].to_list()))
    grouped = (
        pl.concat(
            [
                frame.with_columns(pl.lit(0, pl.Int32).alias("evidence_documents")),
                frame,
            ]
        )
        .group_by(["method", "kind", "evidence_documents"])
        .agg(
            queries=pl.len().cast(pl.Int64),
            recall_at_k=pl.col("recall_at_k").mean(),
            mrr=pl.col("reciprocal_rank").mean(),
        )
    )
    order = {m: i for i, m in enumerate(methods)}
    return (
        grouped.with_columns(_o=pl.col("method").replace_strict(order, return_dtype=pl.Int32))
        .sort(["_o", "kind", "evidence_documents"])
        .drop("_o")
        .select(["method", "kind", "evidence_documents", "queries", "recall_at_k", "mrr"])
        .to_arrow()
    )


@dataclass
class AttributionCheck:
    """The check's tables, as the `attribution_eval` artefact stores them."""

    gains: pa.Table  # tail-patch gain per (query, method)
    summary: pa.Table  # mean gain per (method, kind)
    retrieval: pa.Table  # evidence found per (query, method), for queries that name their evidence
    retrieval_summary: pa.Table  # recall@k and MRR per (method, evidence documents)
    rankings: pa.Table  # each method's top k per query, with sources (RANKING_SCHEMA)
    evidence: pa.Table  # the documents stating each query's evidence (EVIDENCE_SCHEMA)

    def outputs(self) -> dict[str, pa.Table]:
        return {
            "gains.parquet": self.gains,
            "summary.parquet": self.summary,
            "retrieval.parquet": self.retrieval,
            "retrieval_summary.parquet": self.retrieval_summary,
            "rankings.parquet": self.rankings,
            "evidence.parquet": self.evidence,
        }


def attribution_check(
    lm: LoadedModel,
    queries: list[Query],
    documents: Documents,
    top: pa.Table,
    shard_gradients: Iterable[tuple[str, DocumentGradients]],
    *,
    query_evidence: list[str | None] | None = None,
    query_frequency: list[int | None] | None = None,
    k: int,
    learning_rate: float,
    seed: int,
    projection: KroneckerProjection | None,
    batch_size: int,
    progress: Callable[[int], None] | None = None,
    preconditioned: QueryGradients | None = None,
    factors: FactorSource | None = None,
) -> AttributionCheck:
    """Each method's top-k documents of every query: their tail-patch gain, and (for queries
    that name their `evidence`) how many of the documents stating it they include. With the
    stored ``preconditioned`` query gradients, gradient-normalised influence is measured too
    (RelatIF where the store and ``factors`` give the self-influence: `SelfInfluence.of_store`)."""
    if not documents.keys:
        raise InputError("the attribution check needs at least one document")
    bm25 = BM25Index(documents.texts)
    sequences, starts = encode_queries(queries, lm.tokenizer, lm.max_context)
    rankings = {
        "influence": influence_ranking(top, queries, documents, k),
        "random": [top_k_random(len(documents.keys), k, seed + i) for i in range(len(queries))],
        "bm25": [bm25.top_k(q.prompt + q.completion, k) for q in queries],
        **gradient_rankings(
            lm,
            queries,
            shard_gradients,
            documents,
            k,
            projection,
            batch_size,
            (sequences, starts),
            preconditioned,
            None if preconditioned is None else SelfInfluence.of_store(projection, factors, lm_layers(lm)),
        ),
    }
    encoded = [(q.id, q.kind, seq, start) for q, seq, start in zip(queries, sequences, starts)]
    gains = evaluate(lm, encoded, documents.tokens, rankings, learning_rate, progress)
    ids, evidence = [q.id for q in queries], query_evidence or [None] * len(queries)
    retrieval = evidence_retrieval(evidence, ids, documents, rankings, [q.kind for q in queries])
    return AttributionCheck(
        gains,
        summarize(gains, seed=seed),
        retrieval,
        summarize_retrieval(retrieval),
        ranking_table(ids, documents, rankings),
        evidence_documents(ids, evidence, documents, query_frequency),
    )


def lm_layers(lm: LoadedModel) -> list[str]:
    """The tracked layers' names, in the order the gradient rankings concatenate them."""
    return sorted(layer.name for layer in lm.layers)
