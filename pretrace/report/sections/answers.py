"""Do influential documents contain the answer? The answer and intermediate results of each query
searched in its top documents, against the rate at which they appear in the whole corpus."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import polars as pl
from matplotlib.figure import Figure

from pretrace.analyses.analysis import Analysis
from pretrace.analyses.answer_detection import PER_QUERY_SCHEMA, answer_detection, detection_summary
from pretrace.analyses.intervals import wilson
from pretrace.analyses.kinds import POOLED, reasoning_label
from pretrace.analyses.report_config import FACTUAL
from pretrace.report.formatting import interval, num, pct
from pretrace.report.html import figure, table, with_ci
from pretrace.report.plots import empty, error_bars, png
from pretrace.report.section import Section
from pretrace.report.sections import top_documents


@dataclass
class Answers:
    answers: pl.DataFrame  # per query: pretrace's top-k search
    answers_kinds: pl.DataFrame
    answer_search: pl.DataFrame  # per query: Ruis et al.'s search of the top 500, step by step
    answer_search_kinds: pl.DataFrame
    answer_detection: pl.DataFrame  # per control query: evidence retrieved in the top k, and detected
    answer_detection_summary: pl.DataFrame  # the search's detection rate, by stated frequency


def compute(a: Analysis) -> Answers:
    """Answers and intermediate results found in the top documents, per query and by kind, and the
    search's positive control (`pretrace.analyses.answer_detection`)."""
    per_query, search, detection = _per_query(a), _search_per_query(a), _detection(a)
    return Answers(
        per_query,
        _by_kind(a, per_query),
        search,
        _search_by_kind(a, search),
        detection,
        detection_summary(detection, a.config.level),
    )


def _detection(a: Analysis) -> pl.DataFrame:
    """Control queries (known evidence, with step results) at the report's k: from the top lists
    this section searches and the attribution check's documents stating each query's evidence."""
    evidence = (a.attribution or {}).get("evidence")
    if evidence is None:
        return pl.DataFrame(schema=PER_QUERY_SCHEMA)
    top = a.result(top_documents.compute).top_documents
    return answer_detection(top, evidence, dict(zip(a.queries["id"].to_list(), a.stats.targets)), a.config.k)


def _search_per_query(a: Analysis) -> pl.DataFrame:
    """As Ruis et al.: each query's top documents (500, or all when fewer) searched for the answer
    and for the result of every step ([intermediate results..., answer]): is each step's result in
    some document, and are all of them in one document, or only across several?"""
    stats, corpus = a.stats, a.stats.answer_docs()
    rows = []
    for q, row in enumerate(a.queries.iter_rows(named=True)):
        targets = stats.targets[q] or [""]
        searched = stats.search.found[q, :, : len(targets)]
        depth = searched.shape[0]
        answer = bool(targets[0])
        steps = [i for i in range(1, len(targets)) if targets[i]] + ([0] if answer else [])
        in_one = bool(searched[:, steps].all(axis=1).any()) if len(steps) > 1 else None
        across = bool(searched[:, steps].any(axis=0).all()) if len(steps) > 1 else None
        rows.append(
            {
                "query_id": row["id"],
                "kind": row["kind"],
                "category": row["category"],
                "answer": targets[0] or None,
                "searched": depth,
                "docs_with_answer": int(searched[:, 0].sum()) if answer else None,
                "answer_found": bool(searched[:, 0].any()) if answer else None,
                "expected_by_chance": depth * corpus[q][0] / stats.n if answer and stats.n else None,
                "steps": len(steps),
                "steps_found": int(searched[:, steps].any(axis=0).sum()) if steps else 0,
                "all_steps_in_one_document": in_one,
                "all_steps_across_documents": across,
            }
        )
    schema = {
        "query_id": pl.String,
        "kind": pl.String,
        "category": pl.String,
        "answer": pl.String,
        "searched": pl.Int64,
        "docs_with_answer": pl.Int64,
        "answer_found": pl.Boolean,
        "expected_by_chance": pl.Float64,
        "steps": pl.Int64,
        "steps_found": pl.Int64,
        "all_steps_in_one_document": pl.Boolean,
        "all_steps_across_documents": pl.Boolean,
    }
    return pl.DataFrame(rows, schema=schema)


def _search_by_kind(a: Analysis, search: pl.DataFrame) -> pl.DataFrame:
    rows = []
    for g in a.groups:
        sub = search.filter(pl.col("query_id").is_in(g.ids))
        with_answer, n, hits, lo, hi = _answered(a, sub, "answer_found")
        multi = sub.filter(pl.col("steps") > 1)
        one, across = (
            int(multi["all_steps_in_one_document"].sum() or 0),
            int(multi["all_steps_across_documents"].sum() or 0),
        )
        rows.append(
            {
                **g.row(),
                "queries": sub.height,
                "searched": int(sub["searched"].max() or 0),
                "queries_with_answer": n,
                "answer_found": hits,
                "share_answer_found": hits / n if n else math.nan,
                "ci_low": lo,
                "ci_high": hi,
                "mean_docs_with_answer": float(with_answer["docs_with_answer"].mean()) if n else math.nan,
                "mean_expected_by_chance": float(with_answer["expected_by_chance"].mean()) if n else math.nan,
                "multi_step_queries": multi.height,
                "all_steps_in_one_document": one,
                "all_steps_across_documents": across,
            }
        )
    return pl.DataFrame(rows)


def _per_query(a: Analysis) -> pl.DataFrame:
    stats = a.stats
    top = a.result(top_documents.compute).top_documents.filter(pl.col("side") == "top")
    corpus = stats.answer_docs()
    rows = []
    for q, row in enumerate(a.queries.iter_rows(named=True)):
        targets = stats.targets[q] or [""]
        answer, intermediates = targets[0], targets[1:]
        mine = top.filter(pl.col("query_id") == row["id"])
        k = mine.height
        found = mine["answer_found"].to_list()
        flags = mine["intermediates_found"].to_list()
        inter_any = [any(f[i] for f in flags if f is not None and i < len(f)) for i in range(len(intermediates))]
        inter_docs = sum(1 for f in flags if f and any(f))
        base = corpus[q][0] / stats.n if answer and stats.n else math.nan
        rows.append(
            {
                "query_id": row["id"],
                "kind": row["kind"],
                "category": row["category"],
                "answer": answer or None,
                "top_k": k,
                "docs_with_answer": int(sum(bool(x) for x in found)) if answer else None,
                "answer_in_top": any(bool(x) for x in found) if answer else None,
                "corpus_docs_with_answer": int(corpus[q][0]) if answer else None,
                "expected_by_chance": k * base if answer else None,
                "intermediates": len(intermediates),
                "intermediates_in_top": int(sum(inter_any)),
                "docs_with_an_intermediate": inter_docs,
            }
        )
    schema = {
        "query_id": pl.String,
        "kind": pl.String,
        "category": pl.String,
        "answer": pl.String,
        "top_k": pl.Int64,
        "docs_with_answer": pl.Int64,
        "answer_in_top": pl.Boolean,
        "corpus_docs_with_answer": pl.Int64,
        "expected_by_chance": pl.Float64,
        "intermediates": pl.Int64,
        "intermediates_in_top": pl.Int64,
        "docs_with_an_intermediate": pl.Int64,
    }
    return pl.DataFrame(rows, schema=schema)


def _answered(a: Analysis, sub: pl.DataFrame, found: str) -> tuple[pl.DataFrame, int, int, float, float]:
    """A group's queries that have an answer, how many, how many found it (``found``), and the
    Wilson interval of that share."""
    with_answer = sub.filter(pl.col("answer").is_not_null())
    n, hits = with_answer.height, int(with_answer[found].sum() or 0)
    return with_answer, n, hits, *wilson(hits, n, a.config.level)


def _by_kind(a: Analysis, per_query: pl.DataFrame) -> pl.DataFrame:
    rows = []
    for g in a.groups:
        sub = per_query.filter(pl.col("query_id").is_in(g.ids))
        with_answer, n, hits, lo, hi = _answered(a, sub, "answer_in_top")
        inter_total = int(sub["intermediates"].sum() or 0)
        inter_found = int(sub["intermediates_in_top"].sum() or 0)
        rows.append(
            {
                **g.row(),
                "queries": sub.height,
                "queries_with_answer": n,
                "answer_in_top": hits,
                "share_answer_in_top": hits / n if n else math.nan,
                "ci_low": lo,
                "ci_high": hi,
                "mean_docs_with_answer": float(with_answer["docs_with_answer"].mean()) if n else math.nan,
                "mean_expected_by_chance": float(with_answer["expected_by_chance"].mean()) if n else math.nan,
                "intermediates": inter_total,
                "intermediates_in_top": inter_found,
                "share_intermediates_in_top": inter_found / inter_total if inter_total else math.nan,
            }
        )
    return pl.DataFrame(rows)


def _share(r: dict) -> str:
    return f"{pct(r['share_answer_in_top'], 0)} {interval(r['ci_low'], r['ci_high'], lambda x: pct(x, 0))}"


def reading(a: Analysis) -> list[str]:
    out = []
    k = a.config.k
    rows = {r["kind"]: r for r in a.result(compute).answers_kinds.to_dicts()}
    fact = [r for r in rows.values() if r["category"] == FACTUAL and r["queries_with_answer"]]
    label = reasoning_label(a.groups)
    reas = rows.get(label) if label else None
    if fact:
        r = fact[0]
        out.append(
            f"The answer appears in the top {k} documents of {r['answer_in_top']} of {r['queries_with_answer']} "
            f"{r['kind']} queries ({_share(r)}), in "
            f"{num(r['mean_docs_with_answer'], 1)} documents per query on average against "
            f"{num(r['mean_expected_by_chance'], 2)} expected by chance."
        )
    if reas and reas["queries_with_answer"]:
        out.append(
            f"For {reas['kind']} queries the final answer appears in the top {k} of {reas['answer_in_top']} of "
            f"{reas['queries_with_answer']} ({_share(reas)}), in "
            f"{num(reas['mean_docs_with_answer'], 1)} documents per query against "
            f"{num(reas['mean_expected_by_chance'], 2)} by chance"
            + (
                f"; {reas['intermediates_in_top']} of {reas['intermediates']} intermediate results appear."
                if reas["intermediates"]
                else "."
            )
        )
    if fact and reas and reas["queries_with_answer"]:
        f, r = fact[0], reas
        if r["ci_high"] < f["ci_low"]:
            out.append(
                "As in Ruis et al. (2024), answers to factual questions are found in influential documents "
                "far more often than answers to reasoning questions."
            )
        elif f["ci_high"] < r["ci_low"]:
            out.append(
                "Unlike Ruis et al. (2024), answers to reasoning questions are found more often than answers "
                "to factual questions."
            )
        else:
            out.append(
                "The intervals overlap, so this report cannot tell whether factual answers appear more often "
                "than reasoning answers (Ruis et al. 2024 found they do)."
            )
    search = {r["kind"]: r for r in a.result(compute).answer_search_kinds.to_dicts()}
    parts = [
        f"{r['kind']} {r['answer_found']} of {r['queries_with_answer']} queries, in "
        f"{num(r['mean_docs_with_answer'], 1)} documents per query against {num(r['mean_expected_by_chance'], 1)} "
        "by chance"
        for r in search.values()
        if r["queries_with_answer"] and r["kind"] != POOLED
    ]
    if parts:
        depth = max(r["searched"] for r in search.values())
        out.append(
            f"Searching the top {depth} documents, as Ruis et al. do, the answer is found for: "
            + "; ".join(parts)
            + "."
        )
    steps = [r for r in search.values() if r["multi_step_queries"] and r["kind"] != POOLED]
    if steps:
        out.append(
            "Every step's result is found in one document for "
            + "; ".join(f"{r['kind']} {r['all_steps_in_one_document']} of {r['multi_step_queries']}" for r in steps)
            + ", and across several documents for "
            + "; ".join(f"{r['kind']} {r['all_steps_across_documents']} of {r['multi_step_queries']}" for r in steps)
            + "."
        )
    out += _detection_reading(a)
    if not out:
        out.append("No query has an answer to search for.")
    out.append(
        "Matching is whole-token: \u201c12\u201d inside \u201c312\u201d, \u201c12.5\u201d or \u201c-12\u201d "
        "does not count as the answer 12; long numbers match with or without thousands separators."
    )
    return out


def _detection_reading(a: Analysis) -> list[str]:
    """The positive control, beside the search's findings: how often the search detects retrieval."""
    rows = a.result(compute).answer_detection_summary.to_dicts()
    if not rows:
        return []
    overall, by = rows[0], rows[1:]
    if not overall["retrieved"]:
        return [
            f"Positive control: none of the {overall['queries']} queries with planted evidence and step results "
            f"had a document stating it in its top {a.config.k}, so the search's detection rate is not measured."
        ]
    rate = f"{pct(overall['detection_rate'], 0)} {interval(overall['ci_low'], overall['ci_high'], lambda x: pct(x, 0))}"
    split = "; ".join(
        f"stated {r['frequency']} time{'s' if r['frequency'] != 1 else ''}: {r['detected']} of {r['retrieved']} "
        f"retrieved (of {r['queries']} queries)"
        for r in by
    )
    return [
        f"Positive control: for {overall['retrieved']} of {overall['queries']} queries with planted evidence and step "
        f"results, a document stating it is in the top {a.config.k}; the search finds the answer and every step result "
        f"in it for {overall['detected']} of them ({rate}; the answer alone for {overall['answer_detected']}; "
        f"{overall['steps_detected']} of {overall['steps']} step results)"
        + (f"; {split}" if split else "")
        + ". A lower rate means the search misses answers that are there, so its \u201cnot found\u201d counts above "
        "overstate their absence."
    ]


def plot(a: Analysis) -> bytes:
    """Share of queries whose answer is in the top k, and of intermediate results found, by kind."""
    df = a.result(compute).answers_kinds.filter(pl.col("kind") != POOLED)
    fig = Figure(figsize=(7.5, 4))
    ax = fig.add_subplot()
    if df.height == 0 or df["queries_with_answer"].sum() == 0:
        empty(ax, "no answers to search for")
        return png(fig)
    x = np.arange(df.height)
    share = np.nan_to_num(df["share_answer_in_top"].to_numpy(), nan=0.0)
    bars = error_bars(share, df["ci_low"].to_numpy(), df["ci_high"].to_numpy())
    ax.bar(x - 0.2, share, 0.4, yerr=bars, capsize=3, color="#1f77b4", label="final answer in top k")
    inter = np.nan_to_num(df["share_intermediates_in_top"].to_numpy(), nan=0.0)
    ax.bar(x + 0.2, inter, 0.4, color="#ff7f0e", label="intermediate results in top k")
    ax.set_xticks(x, df["kind"].to_list(), rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("share of queries / of intermediate results")
    ax.set_title(f"Answers found in the top {a.config.k} documents")
    ax.legend(fontsize=8)
    return png(fig)


def body(a: Analysis, figs: dict[str, bytes]) -> str:
    df = with_ci(
        a.result(compute).answers_kinds, "share_answer_in_top", "ci_low", "ci_high", "share", lambda x: pct(x, 0)
    )
    return (
        figure(
            "answers",
            figs["answers"],
            "Share of queries whose answer occurs in at least one of their top "
            "documents, and share of intermediate results that do (Wilson intervals).",
        )
        + table(
            df,
            {
                "kind": "kind",
                "queries_with_answer": "queries with an answer",
                "answer_in_top": "answer in top k",
                "share": "share [interval]",
                "mean_docs_with_answer": "top documents with the answer (mean)",
                "mean_expected_by_chance": "expected by chance",
                "intermediates": "intermediate results",
                "intermediates_in_top": "found in top k",
            },
            text=("kind",),
        )
        + "<p>As Ruis et al. (2024) search: each query's top documents (500, or every document when fewer) "
        "for the answer and for the result of each step.</p>"
        + table(
            with_ci(
                a.result(compute).answer_search_kinds,
                "share_answer_found",
                "ci_low",
                "ci_high",
                "share",
                lambda x: pct(x, 0),
            ),
            {
                "kind": "kind",
                "searched": "documents searched",
                "queries_with_answer": "queries with an answer",
                "answer_found": "answer found",
                "share": "share [interval]",
                "mean_docs_with_answer": "documents with the answer (mean)",
                "mean_expected_by_chance": "expected by chance (documents)",
                "multi_step_queries": "multi-step queries",
                "all_steps_in_one_document": "all steps in one document",
                "all_steps_across_documents": "all steps across documents",
            },
            text=("kind",),
        )
        + _detection_html(a)
    )


def _detection_html(a: Analysis) -> str:
    summary = a.result(compute).answer_detection_summary
    if summary.is_empty():
        return ""
    df = with_ci(
        summary, "detection_rate", "ci_low", "ci_high", "rate", lambda x: pct(x, 0), n="retrieved"
    ).with_columns(pl.col("frequency").cast(pl.String).replace({"0": "all"}))
    return (
        f"<p>Positive control of the search: queries whose evidence (documents stating the answer and every step "
        f"result) is planted in the corpus. Retrieved: a document stating it is in the query's top {a.config.k} by "
        "influence. Detected: the answer and every step result are found in it by the matching rules below. "
        "Detection rate = detected / retrieved (Wilson intervals).</p>"
        + table(
            df,
            {
                "frequency": "times stated",
                "queries": "queries",
                "retrieved": "retrieved",
                "detected": "detected",
                "rate": "detection rate [interval]",
                "answer_detected": "answer found",
                "steps": "step results",
                "steps_detected": "step results found",
            },
            text=("frequency",),
        )
    )


def headline(a: Analysis) -> dict[str, pl.DataFrame]:
    return {
        "answer_search_detection": a.result(compute).answer_detection_summary,
        "answers_in_top_documents": a.result(compute).answers_kinds.select(
            [
                "kind",
                "queries_with_answer",
                "answer_in_top",
                "share_answer_in_top",
                "mean_expected_by_chance",
                "intermediates",
                "intermediates_in_top",
            ]
        ),
    }


SECTION = Section(
    "answers",
    "Do influential documents contain the answer?",
    body,
    reading,
    figures={"answers": plot},
    compute=compute,
    headline=headline,
)
