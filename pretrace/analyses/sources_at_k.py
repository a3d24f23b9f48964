"""Which sources the top (or bottom) k documents of a query come from, for k up to the corpus.

Ruis et al. compare the sources of the top and bottom k documents, k in {50, 500, 5,000, 50,000,
500,000}, with the corpus. From the merged statistics, without rereading scores:

- for k up to the exact list's length L (1000 by default) the sources are those of the exact
  list: exact;
- beyond, the per-source log-binned histogram gives every bin above the cut exactly; of the bin
  the cut falls in (c documents, c_s of source s, r of them in the top k) source s contributes
  between max(0, r - (c - c_s)) and min(c_s, r) documents; the estimate is r c_s / c.

With more than ``MAX_SOURCES`` source names the histogram pools them, and beyond the exact list
the estimate is NaN with bounds [0, k]. The bottom k are the k most negative scores (the negative tail); k is capped at the number of
documents on that side, so "bottom k" never counts a positively influential document.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pretrace.analyses.shard_statistics import ShardStatistics

SOURCE_KS = (50, 500, 5_000, 50_000, 500_000)
SIDE_TAILS = {"top": "positive", "bottom": "negative"}


@dataclass
class SourceCounts:
    documents: int  # k, capped at the side's documents
    estimate: np.ndarray  # (S,) float64, in the order of stats.sources
    low: np.ndarray  # (S,) lower bound
    high: np.ndarray  # (S,) upper bound
    exact: bool


def source_counts(stats: ShardStatistics, q: int, k: int, side: str) -> SourceCounts:
    """How many of query q's top (``side`` "top") or bottom k documents come from each source."""
    tail = stats.tail(SIDE_TAILS[side])
    sources = len(stats.sources)
    m = min(k, int(tail.count[q]))
    if m <= tail.extreme.shape[1]:
        exact = np.bincount(tail.extreme_source[q, :m], minlength=sources).astype(np.float64)
        return SourceCounts(m, exact, exact, exact, True)
    if tail.source_count.shape[1] != sources:  # pooled (too many sources): no split is known
        return SourceCounts(m, np.full(sources, np.nan), np.zeros(sources), np.full(sources, float(m)), False)
    per_source = tail.source_count[q][:, ::-1]  # (S, W), highest bin first
    totals = per_source.sum(axis=0)
    before = np.concatenate([[0], np.cumsum(totals)])
    j = int(np.searchsorted(before[1:], m))  # the bin the m-th document falls in
    full = per_source[:, :j].sum(axis=1).astype(np.float64)
    r, c, c_s = m - int(before[j]), int(totals[j]), per_source[:, j].astype(np.float64)
    low = full + np.maximum(0.0, r - (c - c_s))
    high = full + np.minimum(c_s, r)
    return SourceCounts(m, full + r * c_s / c, low, high, bool(r == c))
