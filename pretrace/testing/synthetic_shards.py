"""Synthetic queries and per-shard scores with known structure, to preview and test the report.

Documents have a heavy-tailed magnitude shared by all queries (Pareto, like gradient norms) and
latent factors: one per query kind plus a general one. Reasoning queries load strongly on their
kind's factor (so same-kind reasoning queries correlate), factual queries mostly on their own
noise, controls on nothing in particular. Factual answers are planted into the text of their
top-scoring documents; reasoning answers are not.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pyarrow as pa

from pretrace.analyses.merge import ShardFiles
from pretrace.analyses.shard_statistics import EXACT_TOP, summarize_shard
from pretrace.store.storage import Storage

KINDS = ("factual", "arithmetic", "slope", "linear", "control")
SOURCES = ("web", "wiki", "code", "math")
_WORDS = ("the", "of", "value", "number", "city", "river", "result", "step", "then", "we", "compute", "so", "is")


def synthetic_queries(n_queries: int = 20, seed: int = 0) -> pa.Table:
    """A queries table (id, kind, prompt, completion, answer, intermediates, logprob) cycling through KINDS."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_queries):
        kind = KINDS[i % len(KINDS)]
        a, b = (int(x) for x in rng.integers(2, 60, size=2))
        if kind == "factual":
            answer, inter, prompt, nats = f"Capital{i}", [], f"The capital of Country{i} is", rng.uniform(1, 4)
        elif kind == "control":
            answer, inter, prompt, nats = None, [], f"Say something about topic {i}.", rng.uniform(5, 15)
        else:
            answer = str(a * b + i)
            inter = [str(a * b), str(a + b + 1000 + i)]
            prompt, nats = f"({a} * {b}) + {i} = ?", rng.uniform(6, 20)
        rows.append(
            {
                "id": f"q{i:03d}-{kind}",
                "kind": kind,
                "prompt": prompt,
                "completion": f" {answer}" if answer else " something",
                "answer": answer,
                "intermediates": inter,
                "logprob": -float(nats),
            }
        )
    return pa.Table.from_pylist(
        rows,
        schema=pa.schema(
            [
                ("id", pa.string()),
                ("kind", pa.string()),
                ("prompt", pa.string()),
                ("completion", pa.string()),
                ("answer", pa.string()),
                ("intermediates", pa.list_(pa.string())),
                ("logprob", pa.float64()),
            ]
        ),
    )


def synthetic_sources(n_docs: int, seed: int) -> np.ndarray:
    """Source index (into SOURCES) of each document: web 50%, wiki 20%, code 20%, math 10%."""
    return np.random.default_rng(seed + 104729).choice(len(SOURCES), size=n_docs, p=[0.5, 0.2, 0.2, 0.1])


def synthetic_scores(
    queries: pa.Table, n_docs: int, seed: int, alpha: float = 2.5, sources: np.ndarray | None = None
) -> np.ndarray:
    """(Q, n_docs) float32 scores with kind structure and a Pareto(alpha) document magnitude.

    With ``sources``, math documents carry the reasoning factors twice as strongly, so they are
    over-represented among the top documents of reasoning queries.
    """
    rng = np.random.default_rng(seed)
    kinds = queries.column("kind").to_pylist()
    factors = {k: rng.standard_normal(n_docs, dtype=np.float32) for k in KINDS}
    general = rng.standard_normal(n_docs, dtype=np.float32)
    magnitude = (rng.pareto(alpha, n_docs) + 1).astype(np.float32)
    boost = np.where(sources == SOURCES.index("math"), 2.0, 1.0).astype(np.float32) if sources is not None else 1.0
    scores = np.empty((len(kinds), n_docs), dtype=np.float32)
    for q, kind in enumerate(kinds):
        own = rng.standard_normal(n_docs, dtype=np.float32)
        if kind == "factual":
            row = 0.3 * factors[kind] + 0.2 * general + own
            scale = 3.0
        elif kind == "control":
            row = 0.1 * general + own
            scale = 1.0
        else:
            row = boost * (1.2 * factors[kind] + 0.4 * factors["arithmetic"]) + 0.2 * general + 0.6 * own
            scale = 1.0
        scores[q] = scale * magnitude * (row + 0.15)
    return scores


def synthetic_documents(
    queries: pa.Table, scores: np.ndarray, shard: int, seed: int, sources: np.ndarray, plant: int = 3
) -> pa.Table:
    """doc_id, source, text for a shard; each factual answer planted into its query's top ``plant`` documents.

    ``sources`` are the ones ``scores`` were drawn with, so the text agrees with the scores.
    """
    rng = np.random.default_rng(seed + 7919)
    n = scores.shape[1]
    words = rng.integers(0, len(_WORDS), size=(n, 8))
    numbers = rng.integers(0, 5000, size=(n, 2))
    texts = [f"{' '.join(_WORDS[w] for w in words[i])} {numbers[i, 0]} and {numbers[i, 1]}." for i in range(n)]
    for q, (kind, answer) in enumerate(zip(queries.column("kind").to_pylist(), queries.column("answer").to_pylist())):
        if kind == "factual" and answer:
            for i in np.argsort(-scores[q])[:plant]:
                texts[i] += f" Its capital is {answer}."
    source_names = np.asarray(SOURCES)[sources]
    return pa.table(
        {"doc_id": [f"s{shard:04d}-d{i:06d}" for i in range(n)], "source": source_names.tolist(), "text": texts}
    )


def synthetic_shard(
    queries: pa.Table, n_docs: int, shard: int, seed: int = 0
) -> tuple[list[str], np.ndarray, pa.Table]:
    """(doc ids, scores, documents) of one synthetic shard."""
    shard_seed = seed * 100_003 + shard
    sources = synthetic_sources(n_docs, shard_seed)
    scores = synthetic_scores(queries, n_docs, seed=shard_seed, sources=sources)
    documents = synthetic_documents(queries, scores, shard, seed=shard_seed, sources=sources)
    return documents.column("doc_id").to_pylist(), scores, documents


def synthetic_shard_files(shards: Iterable[int], name: str = "shard-{:05d}") -> list[ShardFiles]:
    """Where ``write_synthetic_shards`` stores each shard (``name`` formats the shard index), for readers."""
    return [
        ShardFiles(
            name.format(i),
            f"influence_scores/{name.format(i)}.stats.safetensors",
            f"influence_scores/{name.format(i)}.top.parquet",
        )
        for i in shards
    ]


def write_synthetic_shards(
    store: Storage,
    queries: pa.Table,
    n_docs: int,
    shards: Sequence[int],
    *,
    k: int,
    seed: int = 0,
    exact_top: int = EXACT_TOP,
    name: str = "shard-{:05d}",
) -> list[ShardFiles]:
    """Summarize and store synthetic shards as ``influence_scores`` stores real ones, so the report can read them."""
    ids = queries.column("id").to_pylist()
    files = synthetic_shard_files(shards, name)
    for shard, where in zip(shards, files):
        doc_ids, scores, documents = synthetic_shard(queries, n_docs, shard, seed=seed)
        stats, top = summarize_shard(ids, doc_ids, scores, documents, queries, k=k, exact_top=exact_top)
        store.write_tensors(where.statistics, *stats.to_tensors())
        store.write_parquet(where.top, top)
    return files
