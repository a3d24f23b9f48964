"""Whose completions are explained, and does the model answer each query correctly? Ruis et al.
explain the model's own completions and read the queries it answers correctly apart."""

from __future__ import annotations

import math
from dataclasses import dataclass

import polars as pl

from pretrace.analyses.analysis import Analysis
from pretrace.analyses.completions import GENERATED
from pretrace.analyses.intervals import wilson
from pretrace.analyses.kinds import POOLED
from pretrace.report.formatting import interval, pct
from pretrace.report.html import table, with_ci
from pretrace.report.section import Section

EXCERPT = 160


@dataclass
class Completions:
    completions_kinds: pl.DataFrame  # per kind: completions the model wrote, answers checked, correct


def compute(a: Analysis) -> Completions:
    rows = []
    for g in a.groups:
        sub = a.queries.filter(pl.col("id").is_in(g.ids))
        checked = sub.filter(pl.col("correct").is_not_null())
        n, hits = checked.height, int(checked["correct"].sum() or 0)
        lo, hi = wilson(hits, n, a.config.level)
        rows.append(
            {
                **g.row(),
                "queries": sub.height,
                "generated": int((sub["source"] == GENERATED).sum()),
                "with_answer": n,
                "correct": hits,
                "share_correct": hits / n if n else math.nan,
                "ci_low": lo,
                "ci_high": hi,
            }
        )
    return Completions(pl.DataFrame(rows))


def reading(a: Analysis) -> list[str]:
    kinds = a.result(compute).completions_kinds.filter(pl.col("kind") != POOLED)
    generated, total = int(kinds["generated"].sum()), int(kinds["queries"].sum())
    out = [
        f"The model wrote {generated} of the {total} completions explained here itself (greedy decoding); "
        "the others are given in the queries file."
        if generated
        else f"All {total} completions explained here are given in the queries file."
    ]
    checked = [r for r in kinds.to_dicts() if r["with_answer"]]
    if checked:
        out.append(
            "The model's own greedy answer contains the expected answer for: "
            + "; ".join(
                f"{r['kind']} {r['correct']} of {r['with_answer']} ({pct(r['share_correct'], 0)} "
                f"{interval(r['ci_low'], r['ci_high'], lambda x: pct(x, 0))})"
                for r in checked
            )
            + ". The power-law test of the concentration section is also run on the correct ones, as Ruis et al. do."
        )
    else:
        out.append("No query gives an answer, so the model's answers are not checked.")
    return out


def _answer_excerpt(text: str | None) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= EXCERPT else text[:EXCERPT] + "…"


def body(a: Analysis, figs: dict[str, bytes]) -> str:
    kinds = with_ci(
        a.result(compute).completions_kinds, "share_correct", "ci_low", "ci_high", "share", lambda x: pct(x, 0)
    )
    queries = a.queries.with_columns(pl.col("model_completion").map_elements(_answer_excerpt, return_dtype=pl.String))
    return (
        table(
            kinds,
            {
                "kind": "kind",
                "queries": "queries",
                "generated": "completions the model wrote",
                "with_answer": "queries with an answer",
                "correct": "answered correctly",
                "share": "share [Wilson interval]",
            },
            text=("kind",),
        )
        + "<p>Each query's completion is the one explained; <em>given</em> ones come from the queries file, "
        "<em>generated</em> ones are the model's greedy answer to the prompt (after "
        "<code>completion_instruction</code>). Correct: the model's greedy answer to the explained prompt "
        "contains the query's answer, by the matching rules of the answers section.</p>"
        + table(
            queries,
            {
                "id": "query",
                "kind": "kind",
                "source": "completion",
                "correct": "answered correctly",
                "answer": "answer",
                "model_completion": "the model's greedy answer",
            },
            text=("id", "kind", "source", "answer", "model_completion"),
        )
    )


def headline(a: Analysis) -> dict[str, pl.DataFrame]:
    return {
        "answered_correctly": a.result(compute).completions_kinds.select(
            ["kind", "queries", "generated", "with_answer", "correct", "share_correct"]
        )
    }


SECTION = Section(
    "completions",
    "Whose completions, and does the model answer correctly?",
    body,
    reading,
    compute=compute,
    headline=headline,
)
