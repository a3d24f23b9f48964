"""Which sources each ranking method's top k come from: influence's shares beside those of BM25
(word overlap alone) and of raw-gradient cosine, for the same queries and the same k.

A source over-represented in influence's top k is evidence about influence only insofar as a
lexical or plain-gradient ranking does not show it too: a query about slopes may rank slope
worked solutions first by word overlap alone. The rankings are the attribution check's
(`pretrace.evaluation.attribution_check.ranking_table`).
"""

from __future__ import annotations

import math

import polars as pl

from pretrace.analyses.kinds import KindGroup

METHODS = ("influence", "bm25", "cosine", "identity")  # the order of the columns beside each other

SCHEMA = {
    "kind": pl.String,
    "category": pl.String,
    "method": pl.String,
    "k": pl.Int64,
    "documents": pl.Int64,
    "source": pl.String,
    "count": pl.Int64,
    "share": pl.Float64,
    "corpus_share": pl.Float64,
    "ratio": pl.Float64,
}


def share_rows(counts: dict[str, int], documents: int, corpus: dict[str, int]) -> list[dict]:
    """Per source (of the corpus or the counts): its count among ``documents`` top documents, that
    share, its corpus share and their ratio (over 1: over-represented among the top documents)."""
    total = sum(corpus.values())
    rows = []
    for source in sorted(set(corpus) | set(counts)):
        share = counts.get(source, 0) / documents if documents else math.nan
        corpus_share = corpus.get(source, 0) / total if total else math.nan
        rows.append(
            {
                "source": source,
                "count": counts.get(source, 0),
                "share": share,
                "corpus_share": corpus_share,
                "ratio": share / corpus_share if corpus_share else math.nan,
            }
        )
    return rows


def method_source_shares(rankings: pl.DataFrame, groups: list[KindGroup], corpus: dict[str, int]) -> pl.DataFrame:
    """Per kind group, method and source: how many of the group's queries' top-k documents (every
    query pooled) come from the source, that share, the source's corpus share and their ratio.
    ``rankings``: query_id, method, rank, source rows; methods outside ``METHODS`` (random) are left out."""
    methods = [m for m in METHODS if m in set(rankings["method"].to_list())] if rankings.height else []
    rows = []
    for g in groups:
        mine = rankings.filter(pl.col("query_id").is_in(g.ids))
        for method in methods:
            sub = mine.filter(pl.col("method") == method)
            n = sub.height
            k = int(sub.group_by("query_id").len()["len"].max() or 0) if n else 0
            counts = dict(sub.group_by("source").len().iter_rows())
            rows += [{**g.row(), "method": method, "k": k, "documents": n, **r} for r in share_rows(counts, n, corpus)]
    return pl.DataFrame(rows, schema=SCHEMA)
