"""The data every section of the report reads, from merged statistics, top lists and the queries."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, TypeVar

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from pretrace.analyses.cutoffs import Cutoff, resolve_k
from pretrace.analyses.intervals import mean_interval
from pretrace.analyses.kinds import KindGroup, kind_groups, kind_order, queries_frame
from pretrace.analyses.report_config import ReportConfig
from pretrace.analyses.shard_statistics import ShardStatistics

T = TypeVar("T")
ALL_QUERIES, ANSWERED_CORRECTLY = "all", "answered correctly"
ANSWERS = {"correctly": True, "incorrectly": False}
"""How the model answered the queries a split reads: correctly, or not."""


@dataclass
class Analysis:
    """Merged statistics and top lists with the queries in report order, and each section's tables.

    Sections read each other's tables (answers and sources read the top documents, magnitude the
    concentration shares), so :meth:`result` computes a section's tables once, when first asked for.
    """

    config: ReportConfig
    queries: pl.DataFrame  # id, kind, category, prompt, completion, answer, logprob, source, correct..., in kind order
    stats: ShardStatistics = field(repr=False)  # merged statistics, queries in `queries` order
    top: pa.Table = field(repr=False)  # merged top/bottom lists
    attribution: dict[str, pl.DataFrame] | None = field(default=None, repr=False)  # the attribution check's tables
    comparison: pl.DataFrame | None = field(default=None, repr=False)  # per query and compared model
    accuracy: pl.DataFrame | None = field(default=None, repr=False)  # per shard: stored against exact scores
    reranked: pl.DataFrame | None = field(default=None, repr=False)  # two-stage retrieval's exact scores
    _results: dict[Callable, Any] = field(default_factory=dict, repr=False)

    @property
    def n_documents(self) -> int:
        return self.stats.n

    @property
    def corpus_sources(self) -> dict[str, int]:
        return dict(self.stats.sources)

    def cutoffs(self) -> list[Cutoff]:
        """Every top-k cut-off the report reads, as counts and corpus fractions."""
        n = self.n_documents
        how = "fraction" if self.config.top_fraction is not None else "count"
        out = [
            Cutoff(
                "top and bottom documents per query (top documents, sources, answers in the top k)",
                self.config.k,
                n,
                how,
            ),
            Cutoff("answer search depth (Ruis et al.'s top 500)", min(self.stats.search_depth, n), n, "count"),
        ]
        gains = (self.attribution or {}).get("gains")
        if gains is not None and not gains.is_empty():
            out.append(
                Cutoff(
                    "attribution check: each method's top k (tail-patch, source shares)",
                    int(gains["k"].max()),
                    n,
                    "count",
                )
            )
        return out

    @cached_property
    def kind_order(self) -> list[str]:
        return kind_order(self.queries)

    @cached_property
    def groups(self) -> list[KindGroup]:
        return kind_groups(self.queries)

    def answer_masks(self) -> dict[str, np.ndarray]:
        """Per ANSWERS label, which queries the model answered that way (unchecked ones in
        neither); empty when no answer was checked."""
        correct = self.queries["correct"]
        if not correct.is_not_null().any():
            return {}
        return {label: (correct == value).fill_null(False).to_numpy() for label, value in ANSWERS.items()}

    def answer_subsets(self) -> dict[str, np.ndarray]:
        """The queries a factual-against-reasoning comparison runs on: all, and (as Ruis et al. also
        do) those the model answers correctly, when its answers were checked."""
        masks = self.answer_masks()
        subsets = {ALL_QUERIES: np.ones(self.queries.height, dtype=bool)}
        if masks:
            subsets[ANSWERED_CORRECTLY] = masks["correctly"]
        return subsets

    def interval(self, values: np.ndarray, salt: int) -> tuple[float, float, float]:
        """Mean and bootstrap interval of ``values``; each table's ``salt`` gives it its own draws."""
        return mean_interval(values, self.config.bootstrap, self.config.level, self.rng(salt))

    def rng(self, salt: int) -> np.random.Generator:
        """A generator per salt, so that no table's draws depend on which tables were computed before."""
        return np.random.default_rng([self.config.seed, salt])

    @property
    def rescored(self) -> bool:
        """Whether stored scores are approximate and two-stage retrieval re-scored the top lists."""
        approximate = self.accuracy is None or not self.accuracy["exact"].all()
        return approximate and self.reranked is not None and not self.reranked.is_empty()

    @property
    def reranked_per_side(self) -> int:
        """How many documents per query and side two-stage retrieval re-scored (`rerank_k`)."""
        return int(self.reranked["stored_rank"].max()) if self.rescored else 0

    def result(self, compute: Callable[[Analysis], T]) -> T:
        """``compute(self)``, computed once."""
        if compute not in self._results:
            self._results[compute] = compute(self)
        return self._results[compute]


def analyze(
    stats: ShardStatistics,
    top: pa.Table,
    queries: pa.Table,
    config: ReportConfig = ReportConfig(),
    attribution: dict[str, pa.Table] | None = None,
    comparison: pa.Table | None = None,
    accuracy: pa.Table | None = None,
    reranked: pa.Table | None = None,
) -> Analysis:
    """The report's inputs in report order; the sections compute their tables from it."""
    stored_k = int(pc.max(top.column("rank")).as_py() or 0) if top.num_rows else 0
    # a k given as a corpus fraction is resolved here; either is capped by the k the shards kept
    config = replace(config, k=resolve_k(stats.n, config.k, config.top_fraction, stored_k)[0])
    frame = queries_frame(stats.query_ids, queries, config)
    tables = None if attribution is None else {name: pl.from_arrow(t) for name, t in attribution.items()}
    return Analysis(
        config,
        frame,
        stats.select(frame["id"].to_list()),
        top,
        tables,
        None if comparison is None else pl.from_arrow(comparison),
        None if accuracy is None else pl.from_arrow(accuracy),
        None if reranked is None else pl.from_arrow(reranked),
    )
