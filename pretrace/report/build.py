"""From merged statistics to the report (figures, readings, HTML), and the report to storage."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl
import pyarrow as pa

from pretrace.analyses.analysis import Analysis, analyze
from pretrace.analyses.merge import ShardFiles, merge_shards, merge_stored
from pretrace.analyses.report_config import ReportConfig
from pretrace.analyses.shard_statistics import ShardStatistics
from pretrace.report import page, sections
from pretrace.report.formatting import num
from pretrace.store.storage import Storage

__all__ = [
    "REPORT_PAGE",
    "Report",
    "ShardFiles",
    "build_report",
    "figure_file",
    "make_report",
    "markdown_table",
    "merge_shards",
    "merge_stored",
    "write_report",
]

REPORT_PAGE = "report.html"


def figure_file(name: str) -> str:
    """A plot's file in the report's folder: one name for the stored file and the links to it."""
    return f"figures/{name}.png"


@dataclass
class Report:
    analysis: Analysis
    figures: dict[str, bytes]
    readings: dict[str, list[str]]
    html: str

    def tables(self) -> dict[str, pl.DataFrame]:
        """The tables written as Parquet, by file stem."""
        return sections.tables(self.analysis)

    def headline_tables(self) -> dict[str, pl.DataFrame]:
        """The headline tables (the rows and columns worth a glance), by name."""
        return sections.headline_tables(self.analysis)

    def markdown_tables(self) -> dict[str, str]:
        """The headline tables and readings as Markdown (for Dagster metadata)."""
        out = {name: markdown_table(df) for name, df in self.headline_tables().items()}
        out["readings"] = "\n\n".join(
            f"**{title}**\n\n" + "\n".join(f"- {x}" for x in self.readings[sid])
            for sid, title in sections.CONTENTS
            if sid in self.readings
        )
        return out

    def outputs(self) -> dict[str, bytes | pl.DataFrame]:
        """Every file of the report by its path in the report's folder: the page, the tables, the plots."""
        return {
            REPORT_PAGE: self.html.encode("utf-8"),
            **{f"{name}.parquet": df for name, df in self.tables().items()},
            **{figure_file(name): data for name, data in self.figures.items()},
        }


def markdown_table(df: pl.DataFrame, rows: int = 40) -> str:
    """The first ``rows`` rows of ``df`` as a Markdown table, numbers rounded, cells cut to 80 characters."""

    def cell(v) -> str:
        text = num(v, 3) if isinstance(v, float) else "" if v is None else str(v)
        return text.replace("|", "\\|").replace("\n", " ")[:80]

    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in df.head(rows).iter_rows()]
    return "\n".join(lines)


def make_report(
    stats: ShardStatistics,
    top: pa.Table,
    queries: pa.Table,
    config: ReportConfig = ReportConfig(),
    shards: int | None = None,
    attribution: dict[str, pa.Table] | None = None,
    comparison: pa.Table | None = None,
    accuracy: pa.Table | None = None,
    reranked: pa.Table | None = None,
    left_out: Sequence[str] = (),
) -> Report:
    """Analyses, plots, readings and HTML from merged statistics (no storage, no Dagster);
    ``attribution``: the attribution check's summary tables, by name, if there is one;
    ``comparison``: the comparison with other models (`pretrace.analyses.model_comparison`), if any;
    ``accuracy``: each shard's stored against exact scores (`pretrace.evaluation.projection_check`), if known;
    ``reranked``: exact scores of the top lists' candidates (`pretrace.influence.reranking`), if computed;
    ``left_out``: the corpus files the project leaves out (`exclude_files`), named on the page."""
    analysis = analyze(stats, top, queries, config, attribution, comparison, accuracy, reranked)
    figures = sections.render_figures(analysis)
    readings = sections.readings(analysis)
    return Report(
        analysis, figures, readings, page.render(analysis, figures, readings, shards=shards, left_out=left_out)
    )


def write_report(store: Storage, report: Report, prefix: str = "influence_report") -> list[str]:
    """Every file of :meth:`Report.outputs` under ``prefix``; returns the keys."""
    keys = []
    for name, content in report.outputs().items():
        key = f"{prefix}/{name}"
        if isinstance(content, bytes):
            store.write_bytes(key, content)
        else:
            store.write_parquet(key, content)
        keys.append(key)
    return keys


def build_report(
    store: Storage,
    shards: Sequence[ShardFiles],
    queries: pa.Table,
    config: ReportConfig = ReportConfig(),
    prefix: str = "influence_report",
    attribution: dict[str, pa.Table] | None = None,
    comparison: pa.Table | None = None,
) -> tuple[Report, list[str]]:
    """Merge the shards' stored statistics, analyse, and write the report; returns it and its keys."""
    stats, top = merge_stored(store, shards, config.k)
    report = make_report(
        stats, top, queries, config, shards=len(shards), attribution=attribution, comparison=comparison
    )
    return report, write_report(store, report, prefix)
