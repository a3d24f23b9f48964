"""Method and approximations: what the numbers of the other sections are, and how exact."""

from __future__ import annotations

import html
from dataclasses import dataclass

import polars as pl

from pretrace.analyses.analysis import Analysis
from pretrace.analyses.concentration import share_bound
from pretrace.evaluation.projection_check import ACCURACY_SCHEMA
from pretrace.influence.reranking import agreement_k, order_agreement
from pretrace.report.formatting import num, pct
from pretrace.report.section import Section


@dataclass
class Notes:
    score_accuracy: pl.DataFrame  # per shard: exact, or stored (projected) against exact scores on a sample


def compute(a: Analysis) -> Notes:
    return Notes(a.accuracy if a.accuracy is not None else pl.from_arrow(ACCURACY_SCHEMA.empty_table()))


def _accuracy(a: Analysis) -> str:
    """What the stored scores are: exact, or approximate with the error measured on every shard."""
    rows = a.result(compute).score_accuracy
    if rows.is_empty():
        return ""
    if rows["exact"].all():
        return "<li>Stored scores are exact: unprojected document gradients, dense query gradients.</li>"
    first = rows.row(0, named=True)
    how = []
    if first["projection"] is not None:
        how.append(f"document gradients projected to {html.escape(first['projection'])} per layer")
    if first["document_rank"] is not None:
        how.append(f"document gradients kept at rank {first['document_rank']}")
    if first["query_rank"] is not None:
        how.append(f"query gradients kept at rank {first['query_rank']}")
    if first["stored_dtype"] not in (None, "float32"):
        how.append(f"document gradients stored in {first['stored_dtype']}")
    pearson = rows["pearson_mean"].drop_nulls()
    measured = (
        "the sampled scores were constant, so no correlation is defined"
        if pearson.is_empty()
        else f"mean per-query Pearson r {num(float(pearson.mean()), 3)} (lowest shard {num(float(pearson.min()), 3)}, "
        f"lowest query {num(float(rows['pearson_min'].drop_nulls().min()), 3)}); the same top document for "
        f"{pct(float(rows['top1_agreement'].mean()))} of queries"
    )
    return (
        f"<li>Stored scores are approximate ({'; '.join(how)}). Against exact EK-FAC scores streamed from the "
        f"model for a seeded sample of up to {int(rows['documents'].max())} documents of each of the "
        f"{rows.height} shards: {measured}. Per shard: score_accuracy.parquet.</li>"
    )


def _reranked(a: Analysis) -> str:
    """What two-stage retrieval made exact, and how much it moved."""
    if not a.rescored:
        return ""
    k = a.reranked_per_side
    top = agreement_k(k)
    kept = order_agreement(a.reranked.to_arrow(), top)
    return (
        f"<li>Two-stage retrieval: each query's top and bottom {k} documents by stored score over the whole corpus "
        f"were re-scored exactly (EK-FAC, streamed from the model), shown beside the stored scores in the top "
        f"documents; the stored order had {pct(kept, 0)} of each exact top {top} (of those candidates) in its own "
        f"top {top}. "
        "Every other score, and every other section, uses the stored scores. Per document: "
        "top_documents.parquet (exact_score, exact_rank).</li>"
    )


def body(a: Analysis, figs: dict[str, bytes]) -> str:
    s = a.stats
    return (
        "<ul>"
        f"<li>Scores: EK-FAC influence of each document on log p(completion | prompt); positive means the document "
        f"raised it. {a.n_documents:,} documents, {a.queries.height} queries.</li>"
        + _accuracy(a)
        + _reranked(a)
        + "<li>Correlations are exact: merged per-shard sums (n, means and co-moments) give the same Pearson r as the "
        "full score matrix.</li>"
        f"<li>Shares of positive influence are exact up to rank {s.top_values.shape[1]} (exact per-shard top lists) "
        f"and for all ranks past the last positive score; in between they come from a histogram with "
        f"{s.bins_per_octave} log-spaced bins per octave, whose error is bounded per value (at most "
        f"{pct(share_bound(s.bins_per_octave), 1)} of the share, reported in concentration.parquet as share_error).</li>"
        f"<li>Power-law fits: least squares of log score on log rank over the top of each ranking: at most "
        f"{a.config.fit_ranks} ranks and at most a tenth of the query's positive documents.</li>"
        f"<li>Intervals: {int(100 * a.config.level)}% percentile bootstrap over queries ({a.config.bootstrap} draws), "
        f"stratified by kind for correlations; Wilson intervals for proportions; the permutation test shuffles "
        f"kind labels among reasoning queries ({a.config.permutations} permutations).</li>"
        "<li>Categories: factual kinds "
        + html.escape(", ".join(a.config.factual_kinds))
        + "; controls "
        + html.escape(", ".join(a.config.control_kinds))
        + "; every other kind counts as reasoning.</li>"
        "<li>All tables are in the Parquet files next to this page.</li></ul>"
    )


SECTION = Section("notes", "Method and approximations", body, compute=compute)
