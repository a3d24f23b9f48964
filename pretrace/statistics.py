"""Per-shard sufficient statistics of a query x document score block.

The report never rereads all scores: sums, sums of squares and cross-products give Pearson
correlations between queries over the whole corpus, and per-shard top/bottom-k lists merge
into the global ones. Every field is additive (or a k-way merge), so shards reduce in any order.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import torch

from .serialization import pack, unpack

TOP_SCHEMA = pa.schema(
    [("query_id", pa.string()), ("side", pa.string()), ("rank", pa.int32()), ("doc_id", pa.string()), ("score", pa.float32())]
)


@dataclass
class ScoreStatistics:
    query_ids: list[str]
    n: int
    sum: torch.Tensor  # (Q,) float64
    sumsq: torch.Tensor  # (Q,)
    cross: torch.Tensor  # (Q, Q) sum over documents of s_q s_q'
    positive_sum: torch.Tensor  # (Q,)
    abs_sum: torch.Tensor  # (Q,)

    @classmethod
    def of(cls, query_ids: list[str], scores: torch.Tensor) -> "ScoreStatistics":
        s = scores.double()
        return cls(list(query_ids), s.shape[1], s.sum(1), s.square().sum(1), s @ s.T, s.clamp(min=0).sum(1), s.abs().sum(1))

    def merge(self, other: "ScoreStatistics") -> "ScoreStatistics":
        if self.query_ids != other.query_ids:
            raise ValueError("cannot merge statistics of different query sets; rescore the older shards")
        return ScoreStatistics(
            self.query_ids, self.n + other.n, self.sum + other.sum, self.sumsq + other.sumsq,
            self.cross + other.cross, self.positive_sum + other.positive_sum, self.abs_sum + other.abs_sum,
        )

    def correlation(self) -> torch.Tensor:
        """(Q, Q) Pearson correlation of the queries' influence over all documents."""
        mean = self.sum / self.n
        covariance = self.cross / self.n - torch.outer(mean, mean)
        std = covariance.diagonal().clamp(min=0).sqrt()
        return covariance / torch.outer(std, std)

    def to_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        tensors = {"sum": self.sum, "sumsq": self.sumsq, "cross": self.cross,
                   "positive_sum": self.positive_sum, "abs_sum": self.abs_sum}
        return pack(tensors, "score_statistics", query_ids=self.query_ids, n=self.n)

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> "ScoreStatistics":
        meta = unpack(metadata, "score_statistics")
        return cls(meta["query_ids"], meta["n"], tensors["sum"], tensors["sumsq"], tensors["cross"],
                   tensors["positive_sum"], tensors["abs_sum"])


def top_documents(query_ids: list[str], doc_ids: list[str], scores: torch.Tensor, k: int) -> pa.Table:
    """The k highest ('top') and k lowest ('bottom') scored documents of each query."""
    k = min(k, scores.shape[1])
    rows: dict[str, list] = {name: [] for name in TOP_SCHEMA.names}
    for side, largest in (("top", True), ("bottom", False)):
        values, index = scores.topk(k, dim=1, largest=largest)
        for q, query_id in enumerate(query_ids):
            rows["query_id"] += [query_id] * k
            rows["side"] += [side] * k
            rows["rank"] += list(range(1, k + 1))
            rows["doc_id"] += [doc_ids[i] for i in index[q].tolist()]
            rows["score"] += values[q].tolist()
    return pa.table(rows, schema=TOP_SCHEMA)


def merge_top_documents(tables: list[pa.Table], k: int) -> pa.Table:
    """Global top/bottom k from per-shard lists (each holds its shard's own top/bottom k)."""
    import polars as pl

    merged = pl.from_arrow(pa.concat_tables(tables))
    best = (
        merged.with_columns(key=pl.when(pl.col("side") == "top").then(-pl.col("score")).otherwise(pl.col("score")))
        .sort(["query_id", "side", "key", "doc_id"])
        .group_by(["query_id", "side"], maintain_order=True)
        .head(k)
        .with_columns(rank=pl.int_range(1, pl.len() + 1).over(["query_id", "side"]).cast(pl.Int32))
    )
    return best.select(TOP_SCHEMA.names).to_arrow().cast(TOP_SCHEMA)
