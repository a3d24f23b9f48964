"""Every hypothesis test of the report in one table, with p-values corrected for multiplicity.

The page runs many tests (slopes by fit and subset, correlation differences, influence against
each baseline on each ground truth); read alone, some would fall below 0.05 by chance. Each is
adjusted across all of them: Holm's step-down correction (the family-wise error rate, quoted by
the readings) and Benjamini-Hochberg's (the false discovery rate).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import polars as pl

from pretrace.analyses.analysis import Analysis
from pretrace.report.formatting import num
from pretrace.report.html import table
from pretrace.report.section import Section

LEVEL = 0.05


@dataclass
class Tests:
    report_tests: pl.DataFrame  # section, test, comparison, queries, p, p_holm, p_bh


def compute(a: Analysis) -> Tests:
    from pretrace.report.sections import report_tests  # the package lists the sections this reads

    return Tests(report_tests(a))


def reading(a: Analysis) -> list[str]:
    df = a.result(compute).report_tests.filter(pl.col("p").is_finite())
    if df.is_empty():
        return ["This report has no hypothesis test to correct."]
    raw = df.filter(pl.col("p") < LEVEL).height
    held = df.filter(pl.col("p_holm") < LEVEL)
    names = "; ".join(f"{r['comparison']} (Holm p = {num(r['p_holm'], 3)})" for r in held.iter_rows(named=True))
    return [
        f"The report runs {df.height} tests; {raw} have an uncorrected p below {LEVEL}, and {held.height} remain "
        f"below it after Holm's correction across all {df.height}"
        + (f": {names}." if names else ".")
        + " Readings quote the Holm-adjusted p-values; tests comparing methods on the same queries are paired."
    ]


def body(a: Analysis, figs: dict[str, bytes]) -> str:
    df = a.result(compute).report_tests
    if df.is_empty():
        return ""
    fmt = {c: (lambda v: "n/a" if v is None or not math.isfinite(v) else num(v, 3)) for c in ("p", "p_holm", "p_bh")}
    return table(
        df,
        {
            "section": "section",
            "test": "test",
            "comparison": "comparison",
            "queries": "n",
            "p": "p (uncorrected)",
            "p_holm": "p (Holm)",
            "p_bh": "p (Benjamini-Hochberg)",
        },
        formats=fmt,
        text=("section", "test", "comparison"),
    )


SECTION = Section("tests", "Statistical tests, corrected for multiplicity", body, reading, compute=compute)
