"""Attribution check: do the documents influence ranks first cause the answer? (the
`attribution_eval` artefact: tail-patch gains, and where planted or known evidence ranks)."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from pretrace.analyses.analysis import Analysis
from pretrace.report.formatting import interval, num, pct
from pretrace.report.html import table, with_ci
from pretrace.report.section import Section

BASELINES = {
    "random": "k random documents",
    "bm25": "BM25's top k",
    "cosine": "gradient cosine's top k",
    "identity": "the raw gradient dot product's top k",
}


@dataclass
class Attribution:
    tail_patch: pl.DataFrame  # method, kind, queries, mean_gain, low, high, beats_random
    evidence_retrieval: pl.DataFrame  # method, evidence_documents (0 = all), queries, recall_at_k, mrr


def compute(a: Analysis) -> Attribution:
    check = a.attribution or {}
    empty = pl.DataFrame()
    return Attribution(check.get("summary", empty), check.get("retrieval_summary", empty))


def reading(a: Analysis) -> list[str]:
    result = a.result(compute)
    if result.tail_patch.is_empty():
        return ["This report was built without the attribution check."]
    overall = {r["method"]: r for r in result.tail_patch.filter(pl.col("kind") == "all").iter_rows(named=True)}
    mine = overall.get("influence")
    if mine is None:
        return []

    def said(row: dict) -> str:
        return f"{num(row['mean_gain'], 3)} nats {interval(row['low'], row['high'], lambda x: num(x, 3), missing='')}".strip()

    others = "; ".join(f"{label} {said(overall[m])}" for m, label in BASELINES.items() if m in overall)
    above = [label for m, label in BASELINES.items() if m in overall and mine["mean_gain"] > overall[m]["mean_gain"]]
    below = [label for m, label in BASELINES.items() if m in overall and mine["mean_gain"] <= overall[m]["mean_gain"]]
    verdict = (f"Influence's mean gain is above that of {', '.join(above)}" if above else "") + (
        ("; " if above else "Influence's mean gain is ") + f"not above that of {', '.join(below)}" if below else ""
    )
    lines = [
        f"One small training step on each query's top documents by influence changed log p(completion) by "
        f"{said(mine)} on average ({others}). {verdict} (means; see the intervals). It beat k random documents on "
        f"{pct(mine['beats_random'], 0)} of the queries. A larger gain means the documents, trained on, make the "
        "model more likely to give its answer."
    ]
    retrieval = result.evidence_retrieval
    if not retrieval.is_empty():
        mrr = {r["method"]: r for r in retrieval.filter(pl.col("evidence_documents") == 0).iter_rows(named=True)}
        ranked = ", ".join(f"{m} {num(r['mrr'], 2)}" for m, r in mrr.items())
        n = next(iter(mrr.values()))["queries"]
        lines.append(
            f"For the {n} queries whose evidence is known (documents stating the fact), the mean reciprocal "
            f"rank of the first such document in each method's top k is: {ranked} (1 = always first)."
        )
    return lines


def body(a: Analysis, figs: dict[str, bytes]) -> str:
    result = a.result(compute)
    if result.tail_patch.is_empty():
        return ""
    gains = with_ci(result.tail_patch, "mean_gain", "low", "high", "gain")
    html = table(
        gains,
        {
            "method": "method",
            "kind": "queries",
            "queries": "n",
            "gain": "mean gain (nats) [95% CI]",
            "beats_random": "beats random",
        },
        formats={"beats_random": lambda v: pct(v, 0)},
        text=("method", "kind"),
    )
    if not result.evidence_retrieval.is_empty():
        retrieval = result.evidence_retrieval.with_columns(
            pl.when(pl.col("evidence_documents") == 0)
            .then(pl.lit("all"))
            .otherwise(pl.col("evidence_documents").cast(pl.String) + " documents")
            .alias("stated_by")
        )
        html += "<h3>Where the documents stating a query's fact rank</h3>" + table(
            retrieval,
            {
                "method": "method",
                "stated_by": "fact stated by",
                "queries": "n",
                "recall_at_k": "recall@k",
                "mrr": "MRR",
            },
            text=("method", "stated_by"),
        )
    return html


SECTION = Section("attribution", "Attribution check (tail-patch)", body, reading, compute=compute)
