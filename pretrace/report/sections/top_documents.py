"""Top and bottom documents per query: the merged top lists with each query beside its documents,
and, where the attribution check decomposed them, which tokens carry each score (Grosse et al.
2023's token-level view: ``pretrace.influence.token_influence``)."""

from __future__ import annotations

import html
from dataclasses import dataclass

import polars as pl

from pretrace.analyses.analysis import Analysis
from pretrace.report.section import Section


@dataclass
class TopDocuments:
    top_documents: pl.DataFrame  # the top and bottom k of every query, in query order


def compute(a: Analysis) -> TopDocuments:
    """The merged top lists with the query beside its documents (answers and sources read them
    too), and where two-stage retrieval re-scored them, each document's exact score and rank."""
    q = a.queries
    order = {query_id: i for i, query_id in enumerate(q["id"].to_list())}
    keys = ["query_id", "side", "shard", "doc_id"]
    exact = (
        a.reranked.select([*keys, "exact_score", "exact_rank"])
        if a.rescored
        else pl.DataFrame(schema={**{k: pl.String for k in keys}, "exact_score": pl.Float64, "exact_rank": pl.Int32})
    )
    return TopDocuments(
        pl.from_arrow(a.top)
        .filter(pl.col("rank") <= a.config.k)
        .join(q.select(["id", "kind", "prompt", "completion"]).rename({"id": "query_id"}), on="query_id", how="inner")
        .join(exact, on=keys, how="left")
        .with_columns(_o=pl.col("query_id").replace_strict(order, return_dtype=pl.Int64))
        .sort(["_o", "side", "rank"], descending=[False, True, False])
        .drop("_o")
        .select(
            [
                "query_id",
                "kind",
                "prompt",
                "completion",
                "side",
                "rank",
                "doc_id",
                "shard",
                "source",
                "score",
                "exact_score",
                "exact_rank",
                "excerpt",
                "answer_found",
                "intermediates_found",
            ]
        )
    )


def reading(a: Analysis) -> list[str]:
    n = a.queries.height
    return [
        f"The {min(a.config.html_rows, a.config.k)} most positively and most negatively influential documents of each of the {n} "
        f"queries, out of {a.n_documents:,} documents; all {a.config.k} per side are in top_documents.parquet. "
        "A positive score means the document raised the probability of the completion."
        + (
            f" Ranks and scores are the stored (approximate) ones; the first {a.reranked_per_side} per side "
            "were re-scored exactly (two-stage retrieval), shown as exact score (exact rank)."
            if a.rescored
            else ""
        )
    ]


def _doc_rows(df: pl.DataFrame, rescored: bool) -> str:
    rows = []
    for r in df.iter_rows(named=True):
        cls = ' class="found"' if r["answer_found"] else ""
        score = html.escape(f"{r['score']:.4g}")
        inter = r["intermediates_found"] or []
        marks = (f"answer: {'yes' if r['answer_found'] else 'no'}" if r["answer_found"] is not None else "") + (
            f"; intermediates {sum(inter)}/{len(inter)}" if inter else ""
        )
        rows.append(
            f"<tr{cls}><td>{r['rank']}</td><td class='text'>{html.escape(r['doc_id'])}</td>"
            f"<td class='text'>{html.escape(r['shard'] or '')}</td>"
            f"<td class='text'>{html.escape(r['source'] or '')}</td><td>{score}</td>{_exact_cell(r, rescored)}"
            f"<td class='text'>{html.escape(marks)}</td><td class='excerpt'>{html.escape(r['excerpt'] or '')}</td></tr>"
        )
    head = (
        "<tr><th>rank</th><th class='text'>document</th><th class='text'>file</th><th class='text'>source</th>"
        "<th>score</th>"
        + ("<th>exact score (rank)</th>" if rescored else "")
        + "<th class='text'>answer</th><th class='text'>excerpt</th></tr>"
    )
    return f"<table><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"


def _exact_cell(row: dict, rescored: bool) -> str:
    if not rescored:
        return ""
    if row["exact_score"] is None:
        return "<td class='exact'>not re-scored</td>"
    score = html.escape(f"{row['exact_score']:.4g}")
    return f"<td class='exact'>{score} ({row['exact_rank']})</td>"


def _token_view(a: Analysis, query_id: str) -> str:
    """The shown documents' text with each token shaded by its term of the score (red raises the
    completion's probability, blue lowers it; hover for the value)."""
    tokens = (a.attribution or {}).get("token_influence")
    if tokens is None:
        return ""
    mine = tokens.filter(pl.col("query_id") == query_id)
    if not mine.height:
        return ""
    blocks = []
    for r in mine.iter_rows(named=True):
        peak = max((abs(t) for t in r["terms"]), default=0.0) or 1.0
        spans = "".join(
            f'<span style="background:rgba({"214,39,40" if t > 0 else "31,119,180"},{0.65 * abs(t) / peak:.2f})" '
            f'title="{t:.3g}">{html.escape(token)}</span>'
            for token, t in zip(r["tokens"], r["terms"])
        )
        blocks.append(
            f"<p><b>{html.escape(r['side'])} {r['rank']}</b> · {html.escape(r['doc_id'])} · score "
            f"{r['score']:.4g} (token terms sum to {r['token_sum']:.4g})</p><div class='tokens'>{spans}</div>"
        )
    return (
        "<h4>Which tokens carry the score (each position's term g<sub>t</sub><sup>T</sup> Q a<sub>t</sub>, "
        "as Grosse et al. 2023 show it)</h4>" + "".join(blocks)
    )


def body(a: Analysis, figs: dict[str, bytes]) -> str:
    parts = []
    rows = a.config.html_rows  # and any document exact scores move into the first rows
    shown = a.result(compute).top_documents.filter((pl.col("rank") <= rows) | (pl.col("exact_rank") <= rows))
    for q in a.queries.iter_rows(named=True):
        mine = shown.filter(pl.col("query_id") == q["id"])
        answer = f" · answer {q['answer']}" if q.get("answer") else ""
        parts.append(
            f"<details><summary><b>{html.escape(q['id'])}</b> · {html.escape(q['kind'])}{html.escape(answer)}</summary>"
            f"<div class='qa'><b>prompt:</b> {html.escape(q['prompt'] or '')}\n<b>completion:</b> "
            f"{html.escape(q['completion'] or '')}</div>"
            f"<h4>Most positive (raised the completion's probability)</h4>{_doc_rows(mine.filter(pl.col('side') == 'top'), a.rescored)}"
            f"<h4>Most negative (lowered it)</h4>{_doc_rows(mine.filter(pl.col('side') == 'bottom'), a.rescored)}"
            f"{_token_view(a, q['id'])}</details>"
        )
    return "".join(parts)


SECTION = Section("top-documents", "Top and bottom documents per query", body, reading, compute=compute)
