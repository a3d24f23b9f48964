"""What one section of the report contributes, so that the page, the figures, the readings and the
tables iterate over one list of sections (``sections.SECTIONS``) instead of naming each."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from pretrace.analyses.analysis import Analysis


@dataclass(frozen=True)
class Section:
    id: str  # the HTML anchor
    title: str
    html: Callable[[Analysis, dict[str, bytes]], str]  # the body below the reading, given the rendered figures
    reading: Callable[[Analysis], list[str]] | None = None  # plain-language lines, shown first
    figures: dict[str, Callable[[Analysis], bytes]] = field(default_factory=dict)  # name -> PNG
    # its tables, a dataclass computed once per Analysis (Analysis.result); each DataFrame field is
    # written as Parquet under the field's name
    compute: Callable[[Analysis], Any] | None = None
    headline: Callable[[Analysis], dict[str, pl.DataFrame]] | None = None  # tables for Dagster metadata, by name
    # its hypothesis tests, one dict each: test, comparison, queries (n) and p (uncorrected); the
    # report corrects every test on the page together (``sections.report_tests``)
    tests: Callable[[Analysis], list[dict]] | None = None
