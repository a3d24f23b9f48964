"""The sections of the report, in page order: the one list that the page, the figures, the
readings and the exported tables are built from. Each module holds one section's tables, reading,
plots and HTML, and ends with its :class:`~pretrace.report.section.Section`."""

from __future__ import annotations

from dataclasses import fields

import matplotlib
import polars as pl

from pretrace.analyses.analysis import Analysis
from pretrace.report.sections import (
    answers,
    attribution,
    completions,
    concentration,
    correlation,
    magnitude,
    models,
    notes,
    sources,
    top_documents,
)

SECTIONS = [
    correlation.SECTION,
    magnitude.SECTION,
    concentration.SECTION,
    answers.SECTION,
    sources.SECTION,
    top_documents.SECTION,
    attribution.SECTION,
    completions.SECTION,
    models.SECTION,
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
