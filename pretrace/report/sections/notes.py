"""Method and approximations: what the numbers of the other sections are, and how exact."""

from __future__ import annotations

import html
from dataclasses import dataclass

import polars as pl

from pretrace.analyses.analysis import Analysis
from pretrace.analyses.concentration import PAPER_RANKS, share_bound
from pretrace.analyses.report_config import CATEGORY_MEANING
from pretrace.evaluation.projection_check import ACCURACY_SCHEMA
from pretrace.influence.reranking import agreement_k, order_agreement
from pretrace.report.formatting import SMALL_N, num, pct
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
        f"<li>Power-law fits, one definition per row (the fit column): 'paper', Ruis et al.'s least squares of "
        f"log score on log rank over ranks 1-{PAPER_RANKS}; 'head', the same over at most {a.config.fit_ranks} ranks "
        "and at most a tenth of the query's positive documents; 'mle', maximum likelihood (Clauset et al. 2009, "
        "continuous; Hill's estimator) over the scores above x_min, x_min chosen per query as the score at the "
        f"rank (of at most {a.config.fit_ranks}) whose fit is closest to the scores above it (smallest "
        "Kolmogorov-Smirnov distance; the rank is the row's 'ranks'), slope = -1/(alpha - 1). Least squares on log-log is biased (its points are correlated order statistics, so it "
        "leans on the top ranks and its R\u00b2 overstates the fit); the readings quote the 'paper' fit, "
        "as Ruis et al. do, beside the MLE.</li>"
        f"<li>Intervals: {int(100 * a.config.level)}% percentile bootstrap over queries ({a.config.bootstrap} draws), "
        f"stratified by kind for correlations; Wilson intervals for proportions; the permutation test shuffles "
        f"kind labels among reasoning queries ({a.config.permutations} permutations).</li>"
        + _categories(a)
        + "<li>Units: a score is the first-order change in log p(completion | prompt), in nats, per unit of weight "
        "given to the document's summed next-token loss in training (upweighting it by a small \u03b5 changes log p "
        "by \u03b5 times the score). Influence per nat divides a score by the completion's information, "
        "-log p(completion | prompt) in nats, so it is a change in log p per nat of information, per unit of "
        "document weight.</li>"
        f"<li>Tests: every p-value on the page is also given adjusted across all of the page's tests (Holm, "
        "quoted by the readings, and Benjamini-Hochberg; the tests section); methods compared on the same queries "
        f"are compared by paired tests. Intervals over fewer than {SMALL_N} queries are marked 'rough'.</li>"
        "<li>Cut-offs: every top-k is given as a count and as a share of the corpus (the cut-offs section), and "
        "flagged when it covers more than 5% of it.</li>"
        "<li>All tables are in the Parquet files next to this page.</li></ul>"
    )


def _categories(a: Analysis) -> str:
    """What each category of query is, and which of this report's kinds fall in it."""
    by_category: dict[str, list[str]] = {}
    for kind, category in dict(zip(a.queries["kind"].to_list(), a.queries["category"].to_list())).items():
        by_category.setdefault(category, []).append(kind)
    items = "".join(
        f"<li>{html.escape(category)} ({html.escape(', '.join(by_category.get(category, [])) or 'no queries')}): "
        f"{html.escape(meaning)}</li>"
        for category, meaning in CATEGORY_MEANING.items()
    )
    return f"<li>Categories of query kinds, each read apart (no table pools two):<ul>{items}</ul></li>"


SECTION = Section("notes", "Method and approximations", body, compute=compute)
