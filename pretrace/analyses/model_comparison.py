"""Two models over the same documents and queries: do they draw on the same documents?

Ruis et al. ran the same queries on a 7B and a 35B model and compared the influence of each
document on both. Per shared query this computes, streaming shard by shard (never all scores at
once):

- the Pearson correlation of the two models' scores over every document;
- how many of one model's top k (and bottom k) documents are also the other's;
- the magnitude multiplier: the mean score of the compared model's top k documents over this
  model's (and the same for the bottom k), i.e. how much stronger or weaker the most influential
  documents are for the compared model.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from pretrace.errors import InputError

COMPARISON_SCHEMA = pa.schema(
    [
        ("query_id", pa.string()),
        ("model", pa.string()),
        ("documents", pa.int64()),
        ("pearson", pa.float64()),
        ("k", pa.int64()),
        ("top_overlap", pa.int64()),
        ("bottom_overlap", pa.int64()),
        ("top_multiplier", pa.float64()),
        ("bottom_multiplier", pa.float64()),
    ]
)


@dataclass
class _Extremes:
    """The k largest values per row, with the document each belongs to, merged shard by shard."""

    k: int
    values: np.ndarray | None = None  # (Q, <=k)
    documents: np.ndarray | None = None  # (Q, <=k) object

    def add(self, values: np.ndarray, documents: np.ndarray) -> None:
        """One shard's (Q, N) values of documents (N,)."""
        documents = np.broadcast_to(documents[None, :], values.shape)
        if self.values is not None:
            values = np.concatenate([self.values, values], axis=1)
            documents = np.concatenate([self.documents, documents], axis=1)
        keep = np.argsort(-values, axis=1, kind="stable")[:, : self.k]
        self.values = np.take_along_axis(values, keep, axis=1)
        self.documents = np.take_along_axis(documents, keep, axis=1)


@dataclass
class ModelComparison:
    """Running sums of the two models' scores per query, and each side's extremes."""

    query_ids: list[str]
    k: int
    n: int = 0
    sums: np.ndarray = field(init=False)  # (Q, 5): Σa, Σb, Σa², Σb², Σab
    tops: list[_Extremes] = field(init=False)  # this model's top, compared top, this bottom (negated), compared bottom

    def __post_init__(self) -> None:
        self.sums = np.zeros((len(self.query_ids), 5))
        self.tops = [_Extremes(self.k) for _ in range(4)]

    def add(self, documents: list[str], this: np.ndarray, other: np.ndarray) -> None:
        """One shard: (Q, N) scores of both models over the same documents, queries in order."""
        a, b = this.astype(np.float64), other.astype(np.float64)
        self.n += a.shape[1]
        self.sums += np.stack([a.sum(1), b.sum(1), (a * a).sum(1), (b * b).sum(1), (a * b).sum(1)], axis=1)
        docs = np.asarray(documents, dtype=object)
        for extremes, values in zip(self.tops, (a, b, -a, -b)):
            extremes.add(values, docs)

    def rows(self, model: str) -> list[dict]:
        """One row per query (COMPARISON_SCHEMA), against compared model ``model``."""
        sa, sb, saa, sbb, sab = self.sums.T
        n = max(self.n, 1)
        cov = sab / n - sa / n * sb / n
        var_a, var_b = saa / n - (sa / n) ** 2, sbb / n - (sb / n) ** 2
        with np.errstate(invalid="ignore", divide="ignore"):
            pearson = np.where((var_a > 0) & (var_b > 0), cov / np.sqrt(var_a * var_b), np.nan)
        top_a, top_b, bottom_a, bottom_b = self.tops
        out = []
        for q, query in enumerate(self.query_ids):
            out.append(
                {
                    "query_id": query,
                    "model": model,
                    "documents": self.n,
                    "pearson": float(pearson[q]),
                    "k": int(top_a.values.shape[1]) if top_a.values is not None else 0,
                    "top_overlap": _overlap(top_a, top_b, q),
                    "bottom_overlap": _overlap(bottom_a, bottom_b, q),
                    "top_multiplier": _ratio(top_b.values[q], top_a.values[q]),
                    "bottom_multiplier": _ratio(bottom_b.values[q], bottom_a.values[q]),
                }
            )
        return out


def _overlap(mine: _Extremes, theirs: _Extremes, q: int) -> int:
    return len(set(mine.documents[q].tolist()) & set(theirs.documents[q].tolist()))


def _ratio(theirs: np.ndarray, mine: np.ndarray) -> float:
    """Mean of the compared model's extreme scores over this model's (NaN when this one's is 0)."""
    denominator = float(np.mean(mine))
    return float(np.mean(theirs)) / denominator if denominator != 0 else float("nan")


def score_matrix(table: pa.Table, query_ids: list[str], what: str) -> tuple[list[str], np.ndarray]:
    """(documents, (Q, N) scores) of a stored `query_id, doc_id, score` table, queries in order."""
    queries = table.column("query_id").to_numpy(zero_copy_only=False)
    docs = table.column("doc_id").to_numpy(zero_copy_only=False)
    scores = table.column("score").to_numpy()
    documents = sorted(set(docs.tolist()))
    q_index = {q: i for i, q in enumerate(query_ids)}
    d_index = {d: i for i, d in enumerate(documents)}
    missing = sorted(set(queries.tolist()) ^ set(query_ids))
    if missing or len(scores) != len(query_ids) * len(documents):
        raise InputError(
            f"{what}: its scores do not cover the shared queries {missing[:5]} x every document once; "
            "rescore it (`pretrace run`)"
        )
    matrix = np.empty((len(query_ids), len(documents)), dtype=np.float64)
    matrix[[q_index[q] for q in queries], [d_index[d] for d in docs]] = scores
    return documents, matrix


def compare_models(
    query_ids: list[str], shards: Iterable[tuple[str, pa.Table, dict[str, pa.Table]]], k: int
) -> pa.Table:
    """The comparison table of this model's scores with each compared model's, from each shard's
    score tables (name, this model's, the compared models' by name): each shard read once."""
    comparisons: dict[str, ModelComparison] = {}
    for shard, this, others in shards:
        docs, a = score_matrix(this, query_ids, f"influence_scores[{shard}]")
        for model, other in others.items():
            other_docs, b = score_matrix(other, query_ids, f"{model}/influence_scores[{shard}]")
            if other_docs != docs:
                raise InputError(
                    f"{model}/influence_scores[{shard}] scores other documents than "
                    f"influence_scores[{shard}]; the compared models must share the corpus: rerun "
                    "`pretrace run`"
                )
            comparisons.setdefault(model, ModelComparison(query_ids, k)).add([f"{shard}\x00{d}" for d in docs], a, b)
    rows = [row for model, comparison in comparisons.items() for row in comparison.rows(model)]
    return pa.Table.from_pylist(rows, schema=COMPARISON_SCHEMA)
