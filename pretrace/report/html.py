"""The report as one self-contained HTML page: inline CSS, plots as base64 PNG, no scripts."""

from __future__ import annotations

import base64
import html
from datetime import datetime, timezone
from typing import Callable

import polars as pl

from .analysis import Analysis
from .concentration import share_bound
from .narrative import interval, num, pct

SECTIONS = [
    ("correlation", "Do reasoning queries share influential documents?"),
    ("magnitude", "How much influence per nat of information?"),
    ("concentration", "How concentrated is influence?"),
    ("answers", "Do influential documents contain the answer?"),
    ("sources", "Where do influential documents come from?"),
    ("top-documents", "Top and bottom documents per query"),
    ("notes", "Method and approximations"),
]

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{margin-bottom:.2em} h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
nav a{margin-right:1em} .summary{color:#555}
.reading{background:#f5f7fa;border-left:4px solid #4a78b0;padding:.6em 1em;margin:1em 0}
.reading p{margin:.3em 0}
figure{margin:1em 0} figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#555;font-size:.9em}
table{border-collapse:collapse;font-size:.85em;margin:.8em 0}
th,td{border:1px solid #ddd;padding:.25em .5em;text-align:right;vertical-align:top}
th{background:#f0f0f0} td.text,th.text{text-align:left}
td.excerpt{text-align:left;font-family:ui-monospace,monospace;font-size:.9em;max-width:600px;white-space:pre-wrap}
details{margin:.4em 0;border:1px solid #e5e5e5;padding:.3em .6em;border-radius:4px}
summary{cursor:pointer} .qa{font-family:ui-monospace,monospace;background:#fafafa;padding:.3em;white-space:pre-wrap}
.found{background:#e3f4e1}
"""

Formatter = Callable[[object], str]


def _fmt(v: object) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return num(v, 3)
    if isinstance(v, list):
        return ", ".join(_fmt(x) for x in v)
    return str(v)


def table(df: pl.DataFrame, columns: dict[str, str], formats: dict[str, Formatter] | None = None,
          text: tuple[str, ...] = ()) -> str:
    """An HTML table of the given columns (name -> header)."""
    formats = formats or {}
    head = "".join(f'<th class="{"text" if c in text else ""}">{html.escape(h)}</th>' for c, h in columns.items())
    body = []
    for row in df.select(list(columns)).iter_rows(named=True):
        cells = "".join(
            f'<td class="{"text" if c in text else ""}">{html.escape(formats.get(c, _fmt)(row[c]))}</td>'
            for c in columns
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def figure(name: str, data: bytes, caption: str) -> str:
    encoded = base64.b64encode(data).decode()
    return (f'<figure id="fig-{name}"><img alt="{html.escape(caption)}" data-figure="{name}" '
            f'src="data:image/png;base64,{encoded}"><figcaption>{html.escape(caption)}</figcaption></figure>')


def _reading(lines: list[str]) -> str:
    return '<div class="reading">' + "".join(f"<p>{html.escape(x)}</p>" for x in lines) + "</div>"


def _with_ci(df: pl.DataFrame, value: str, lo: str, hi: str, name: str, fmt: Formatter = lambda x: num(x, 3)) -> pl.DataFrame:
    return df.with_columns(pl.struct([value, lo, hi]).map_elements(
        lambda r: f"{fmt(r[value])} {interval(r[lo], r[hi], fmt, missing='')}".strip(), return_dtype=pl.String).alias(name))


def section_correlation(a: Analysis, figs: dict[str, bytes], reading: list[str]) -> str:
    groups = _with_ci(a.correlation_groups, "mean_r", "ci_low", "ci_high", "mean r [interval]")
    tests = _with_ci(a.correlation_tests, "difference", "ci_low", "ci_high", "difference [interval]")
    return (
        _reading(reading)
        + figure("correlation_matrix", figs["correlation_matrix"],
                 "Pearson correlation of document influence for every pair of queries, grouped by kind.")
        + figure("correlation_groups", figs["correlation_groups"], "Mean correlation of groups of query pairs.")
        + table(groups, {"group": "pairs of queries", "pairs": "pairs", "mean r [interval]": "mean r [interval]"},
                text=("group",))
        + table(tests, {"comparison": "comparison", "difference [interval]": "difference [interval]",
                        "p_value": "permutation p"}, text=("comparison",))
    )


def section_magnitude(a: Analysis, figs: dict[str, bytes], reading: list[str]) -> str:
    df = _with_ci(a.magnitude_kinds, "positive_per_nat_mean", "positive_per_nat_ci_low", "positive_per_nat_ci_high",
                  "positive")
    df = _with_ci(df, "absolute_per_nat_mean", "absolute_per_nat_ci_low", "absolute_per_nat_ci_high", "absolute")
    cmp = _with_ci(a.magnitude_comparison, "reasoning_over_factual", "ci_low", "ci_high", "ratio")
    return (
        _reading(reading)
        + figure("magnitude", figs["magnitude"], "Total influence per query divided by the completion's "
                 "information, -log p(completion | prompt) in nats.")
        + table(df, {"kind": "kind", "queries": "queries", "positive": "mean positive per nat [interval]",
                     "positive_per_nat_median": "median positive per nat", "absolute": "mean absolute per nat [interval]"},
                text=("kind",))
        + table(cmp, {"measure": "measure", "factual_mean": "factual mean", "reasoning_mean": "reasoning mean",
                      "ratio": "reasoning ÷ factual [interval]"}, text=("measure",))
    )


def section_concentration(a: Analysis, figs: dict[str, bytes], reading: list[str]) -> str:
    df = _with_ci(a.concentration_kinds, "mean_share", "ci_low", "ci_high", "cell", lambda x: pct(x, 1))
    wide = df.with_columns(pl.col("fraction").map_elements(lambda f: f"top {100 * f:g}%", return_dtype=pl.String))
    wide = wide.pivot(on="fraction", index="kind", values="cell", maintain_order=True)
    fits = _with_ci(a.power_law_kinds, "mean_slope", "ci_low", "ci_high", "slope")
    return (
        _reading(reading)
        + figure("concentration", figs["concentration"], "Share of a query's total positive influence held by its top "
                 "documents (thin: queries; thick: mean per kind; grey lines: the fractions tabulated).")
        + table(wide, {c: c for c in wide.columns}, text=("kind",))
        + figure("power_law", figs["power_law"], "Influence against rank on log-log axes for the top of each ranking, "
                 "with least-squares power-law fits.")
        + table(fits, {"kind": "kind", "queries": "queries", "slope": "mean slope [interval]", "mean_r2": "mean R²"},
                text=("kind",))
    )


def section_answers(a: Analysis, figs: dict[str, bytes], reading: list[str]) -> str:
    df = _with_ci(a.answers_kinds, "share_answer_in_top", "ci_low", "ci_high", "share", lambda x: pct(x, 0))
    return (
        _reading(reading)
        + figure("answers", figs["answers"], "Share of queries whose answer occurs in at least one of their top "
                 "documents, and share of intermediate results that do (Wilson intervals).")
        + table(df, {"kind": "kind", "queries_with_answer": "queries with an answer",
                     "answer_in_top": "answer in top k", "share": "share [interval]",
                     "mean_docs_with_answer": "top documents with the answer (mean)",
                     "mean_expected_by_chance": "expected by chance", "intermediates": "intermediate results",
                     "intermediates_in_top": "found in top k"}, text=("kind",))
    )


def section_sources(a: Analysis, figs: dict[str, bytes], reading: list[str]) -> str:
    top = a.sources.filter(pl.col("side") == "top").with_columns(
        cell=pl.struct(["ratio", "count"]).map_elements(lambda r: f"×{num(r['ratio'])} ({r['count']})",
                                                        return_dtype=pl.String))
    wide = top.pivot(on="source", index="kind", values="cell", maintain_order=True)
    corpus = a.corpus_sources
    total = sum(corpus.values()) or 1
    return (
        _reading(reading)
        + figure("sources", figs["sources"], "Share of each source among the top and bottom documents of each kind, "
                 "divided by its share of the corpus.")
        + "<p>Top documents: ratio to the corpus share (count). Corpus: "
        + html.escape(", ".join(f"{s} {pct(c / total)}" for s, c in corpus.items())) + "</p>"
        + table(wide, {c: c for c in wide.columns}, text=("kind",))
    )


def _doc_rows(df: pl.DataFrame) -> str:
    rows = []
    for r in df.iter_rows(named=True):
        cls = ' class="found"' if r["answer_found"] else ""
        score = html.escape(f"{r['score']:.4g}")
        inter = r["intermediates_found"] or []
        marks = (f"answer: {'yes' if r['answer_found'] else 'no'}" if r["answer_found"] is not None else "") + (
            f"; intermediates {sum(inter)}/{len(inter)}" if inter else "")
        rows.append(f"<tr{cls}><td>{r['rank']}</td><td class='text'>{html.escape(r['doc_id'])}</td>"
                    f"<td class='text'>{html.escape(r['source'] or '')}</td><td>{score}</td>"
                    f"<td class='text'>{html.escape(marks)}</td><td class='excerpt'>{html.escape(r['excerpt'] or '')}</td></tr>")
    head = "<tr><th>rank</th><th class='text'>document</th><th class='text'>source</th><th>score</th>" \
           "<th class='text'>answer</th><th class='text'>excerpt</th></tr>"
    return f"<table><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"


def section_top_documents(a: Analysis, reading: list[str]) -> str:
    parts = [_reading(reading)]
    shown = a.top_documents.filter(pl.col("rank") <= a.config.html_rows)
    for q in a.queries.iter_rows(named=True):
        mine = shown.filter(pl.col("query_id") == q["id"])
        answer = f" · answer {q['answer']}" if q.get("answer") else ""
        parts.append(
            f"<details><summary><b>{html.escape(q['id'])}</b> · {html.escape(q['kind'])}{html.escape(answer)}</summary>"
            f"<div class='qa'><b>prompt:</b> {html.escape(q['prompt'] or '')}\n<b>completion:</b> "
            f"{html.escape(q['completion'] or '')}</div>"
            f"<h4>Most positive (raised the completion's probability)</h4>{_doc_rows(mine.filter(pl.col('side') == 'top'))}"
            f"<h4>Most negative (lowered it)</h4>{_doc_rows(mine.filter(pl.col('side') == 'bottom'))}</details>"
        )
    return "".join(parts)


def section_notes(a: Analysis) -> str:
    s = a.stats
    return (
        "<ul>"
        f"<li>Scores: EK-FAC influence of each document on log p(completion | prompt); positive means the document "
        f"raised it. {a.n_documents:,} documents, {a.queries.height} queries.</li>"
        "<li>Correlations are exact: merged per-shard sums (n, means and co-moments) give the same Pearson r as the "
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
        "<li>Categories: factual kinds " + html.escape(", ".join(a.config.factual_kinds)) + "; controls "
        + html.escape(", ".join(a.config.control_kinds)) + "; every other kind counts as reasoning.</li>"
        "<li>All tables are in the Parquet files next to this page.</li></ul>"
    )


def render(a: Analysis, figs: dict[str, bytes], readings: dict[str, list[str]], title: str = "pretrace influence report",
           shards: int | None = None) -> str:
    counts = a.queries.group_by("kind", maintain_order=True).len()
    kinds = ", ".join(f"{k} {n}" for k, n in counts.iter_rows())
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    summary = (f"{a.n_documents:,} documents" + (f" in {shards} shards" if shards is not None else "")
               + f" · {a.queries.height} queries ({kinds}) · top/bottom k = {a.config.k} · generated {when}")
    bodies = {
        "correlation": section_correlation(a, figs, readings["correlation"]),
        "magnitude": section_magnitude(a, figs, readings["magnitude"]),
        "concentration": section_concentration(a, figs, readings["concentration"]),
        "answers": section_answers(a, figs, readings["answers"]),
        "sources": section_sources(a, figs, readings["sources"]),
        "top-documents": section_top_documents(a, readings["top-documents"]),
        "notes": section_notes(a),
    }
    nav = "".join(f'<a href="#{sid}">{html.escape(t)}</a>' for sid, t in SECTIONS)
    sections = "".join(f'<section id="{sid}"><h2>{html.escape(t)}</h2>{bodies[sid]}</section>' for sid, t in SECTIONS)
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1><p class='summary'>{html.escape(summary)}</p>"
            f"<nav>{nav}</nav>{sections}</body></html>")
