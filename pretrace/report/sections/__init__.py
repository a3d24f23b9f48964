"""The sections of the report, in page order: the one list that the page, the figures, the
readings and the exported tables are built from. Each module holds one section's tables, reading,
plots and HTML, and ends with its :class:`~pretrace.report.section.Section`."""

from __future__ import annotations

from dataclasses import fields

import matplotlib
import polars as pl

from pretrace.analyses.analysis import Analysis
from pretrace.analyses.multiplicity import benjamini_hochberg, holm
from pretrace.report.sections import (
    answers,
    attribution,
    completions,
    concentration,
    correlation,
    cutoffs,
    magnitude,
    models,
    notes,
    sources,
    tests,
    top_documents,
)

SECTIONS = [
    cutoffs.SECTION,
    correlation.SECTION,
    magnitude.SECTION,
    concentration.SECTION,
    answers.SECTION,
    sources.SECTION,
    top_documents.SECTION,
    attribution.SECTION,
    completions.SECTION,
    models.SECTION,
    tests.SECTION,
    notes.SECTION,
]
CONTENTS = [(s.id, s.title) for s in SECTIONS]  # the page's navigation: (anchor, title) of each section
FIGURES = {name: plot for s in SECTIONS for name, plot in s.figures.items()}


def render_figures(a: Analysis) -> dict[str, bytes]:
    """Every plot as PNG bytes, by name. Text is drawn as written: query kinds, sources and ids
    are the user's data, and one holding `$...$` is a label, not mathtext to parse (or fail on)."""
    with matplotlib.rc_context({"text.parse_math": False}):
        return {name: plot(a) for name, plot in FIGURES.items()}


def readings(a: Analysis) -> dict[str, list[str]]:
    """Each section's plain-language reading, by section id."""
    return {s.id: s.reading(a) for s in SECTIONS if s.reading}


def tables(a: Analysis) -> dict[str, pl.DataFrame]:
    """Every table written as Parquet, by file stem: the queries, then each section's."""
    out = {"queries": a.queries}
    for s in SECTIONS:
        if s.compute:
            result = a.result(s.compute)
            out |= {
                f.name: getattr(result, f.name)
                for f in fields(result)
                if isinstance(getattr(result, f.name), pl.DataFrame)
            }
    return out


def headline_tables(a: Analysis) -> dict[str, pl.DataFrame]:
    """The tables worth a glance (Dagster metadata), by name."""
    out: dict[str, pl.DataFrame] = {}
    for s in SECTIONS:
        if s.headline:
            out |= s.headline(a)
    return out


TESTS_SCHEMA = {
    "section": pl.String,
    "test": pl.String,
    "comparison": pl.String,
    "queries": pl.Int64,
    "p": pl.Float64,
    "p_holm": pl.Float64,
    "p_bh": pl.Float64,
}


def _report_tests(a: Analysis) -> pl.DataFrame:
    rows = [{"section": s.id, **row} for s in SECTIONS if s.tests for row in s.tests(a)]
    frame = pl.DataFrame(
        [{k: r.get(k) for k in ("section", "test", "comparison", "queries", "p")} for r in rows],
        schema={k: v for k, v in TESTS_SCHEMA.items() if k not in ("p_holm", "p_bh")},
    )
    p = frame["p"].to_numpy() if frame.height else []
    return frame.with_columns(
        p_holm=pl.Series(holm(p), dtype=pl.Float64), p_bh=pl.Series(benjamini_hochberg(p), dtype=pl.Float64)
    )


def report_tests(a: Analysis) -> pl.DataFrame:
    """Every hypothesis test on the page, one row each, with its p-value adjusted across all of
    them: Holm (family-wise error, what the readings quote) and Benjamini-Hochberg (false discovery rate)."""
    return a.result(_report_tests)


def adjusted_p(a: Analysis, section: str, comparison: str) -> float:
    """The Holm-adjusted p of one test of the page (NaN when there is no such test)."""
    rows = report_tests(a).filter((pl.col("section") == section) & (pl.col("comparison") == comparison))
    return float(rows["p_holm"][0]) if rows.height and rows["p_holm"][0] is not None else float("nan")
