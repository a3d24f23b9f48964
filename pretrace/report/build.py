"""Reading per-shard statistics, merging them one shard at a time, and writing the report.

Memory is bounded by one shard's statistics plus the running merge (Q x Q co-moments, Q x L top
values, Q x W histogram bins, Q x 2k top rows), whatever the number of shards or documents.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Iterable, Sequence

import polars as pl
import pyarrow as pa

from ..errors import InputError
from ..statistics import ShardStatistics, merge_top_documents
from ..storage import Storage
from . import figures as fig
from . import html as page
from . import narrative
from .analysis import POOLED, Analysis, ReportConfig, analyze

MAIN_FIGURES = ("correlation_matrix", "correlation_groups", "magnitude", "concentration", "power_law")


@dataclass(frozen=True)
class ShardFiles:
    """Where one shard's statistics (safetensors) and top lists (Parquet) are stored."""

    shard: str
    statistics: str
    top: str


def merge_shards(items: Iterable[tuple[ShardStatistics, pa.Table]], k: int) -> tuple[ShardStatistics, pa.Table]:
    """Fold shards' (statistics, top table) pairs into corpus-wide ones, one at a time."""
    stats: ShardStatistics | None = None
    top: pa.Table | None = None
    for shard_stats, shard_top in items:
        stats = shard_stats if stats is None else stats.merge(shard_stats)
        top = merge_top_documents([shard_top] if top is None else [top, shard_top], k)
    if stats is None or top is None:
        raise InputError("no shard statistics to build a report from")
    return stats, top


def read_shards(store: Storage, shards: Sequence[ShardFiles]) -> Iterable[tuple[ShardStatistics, pa.Table]]:
    """Each shard's statistics and top table, read lazily; errors name the shard."""
    for files in shards:
        try:
            stats = ShardStatistics.from_tensors(*store.read_tensors(files.statistics))
        except InputError as exc:
            raise InputError(f"shard {files.shard!r}: {exc}") from None
        yield stats, store.read_parquet(files.top)


def merge_stored(store: Storage, shards: Sequence[ShardFiles], k: int) -> tuple[ShardStatistics, pa.Table]:
    """Merge the stored statistics of ``shards``; a shard scored with other queries is named in the error."""
    reference: list[str] | None = None
    first = None

    def checked():
        nonlocal reference, first
        for files, (stats, top) in zip(shards, read_shards(store, shards)):
            if reference is None:
                reference, first = stats.query_ids, files.shard
            elif stats.query_ids != reference:
                raise InputError(f"shard {files.shard!r} was scored with other queries than shard {first!r}: "
                                 "rematerialize influence_scores for the older shards")
            yield stats, top

    return merge_shards(checked(), k)


@dataclass
class Report:
    analysis: Analysis
    figures: dict[str, bytes]
    readings: dict[str, list[str]]
    html: str

    def tables(self) -> dict[str, pl.DataFrame]:
        return self.analysis.tables()

    def markdown_tables(self) -> dict[str, str]:
        """The headline tables and readings as Markdown (for Dagster metadata)."""
        a = self.analysis
        md = markdown_table
        out = {
            "correlation": md(a.correlation_groups, ["group", "pairs", "mean_r", "ci_low", "ci_high"]),
            "magnitude_per_nat": md(a.magnitude_kinds, ["kind", "queries", "positive_per_nat_mean",
                                                        "positive_per_nat_ci_low", "positive_per_nat_ci_high",
                                                        "absolute_per_nat_mean"]),
            "concentration": md(a.concentration_kinds.filter(pl.col("kind") != POOLED),
                                ["kind", "fraction", "documents", "mean_share", "ci_low", "ci_high"]),
            "power_law": md(a.power_law_kinds, ["kind", "queries", "mean_slope", "ci_low", "ci_high", "mean_r2"]),
            "answers_in_top_documents": md(a.answers_kinds, ["kind", "queries_with_answer", "answer_in_top",
                                                             "share_answer_in_top", "mean_expected_by_chance",
                                                             "intermediates", "intermediates_in_top"]),
            "sources": md(a.sources.filter((pl.col("side") == "top") & (pl.col("kind") != POOLED))
                          .sort("ratio", descending=True, nulls_last=True).head(20),
                          ["kind", "source", "count", "share", "corpus_share", "ratio"]),
        }
        out["readings"] = "\n\n".join(f"**{title}**\n\n" + "\n".join(f"- {x}" for x in self.readings[sid])
                                      for sid, title in page.SECTIONS if sid in self.readings)
        return out

    def markdown_figures(self, names: Sequence[str] = MAIN_FIGURES) -> dict[str, str]:
        """The main plots as Markdown images with base64 PNG data URLs."""
        return {f"plot_{name}": f"![{name}](data:image/png;base64,{base64.b64encode(self.figures[name]).decode()})"
                for name in names}


def markdown_table(df: pl.DataFrame, columns: list[str], rows: int = 40) -> str:
    def cell(v) -> str:
        text = narrative.num(v, 3) if isinstance(v, float) else "" if v is None else str(v)
        return text.replace("|", "\\|").replace("\n", " ")[:80]

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r[c]) for c in columns) + " |" for r in df.head(rows).iter_rows(named=True)]
    return "\n".join(lines)


def make_report(stats: ShardStatistics, top: pa.Table, queries: pa.Table, config: ReportConfig = ReportConfig(),
                shards: int | None = None) -> Report:
    """Analyses, plots, readings and HTML from merged statistics (no storage, no Dagster)."""
    analysis = analyze(stats, top, queries, config)
    figures = fig.render_all(analysis)
    readings = narrative.readings(analysis)
    return Report(analysis, figures, readings, page.render(analysis, figures, readings, shards=shards))


def write_report(store: Storage, report: Report, prefix: str = "influence_report") -> list[str]:
    """report.html, one Parquet file per table and one PNG per figure under ``prefix``; returns the keys."""
    keys = []
    key = f"{prefix}/report.html"
    store.write_bytes(key, report.html.encode("utf-8"))
    keys.append(key)
    for name, df in report.tables().items():
        key = f"{prefix}/{name}.parquet"
        store.write_parquet(key, df)
        keys.append(key)
    for name, data in report.figures.items():
        key = f"{prefix}/figures/{name}.png"
        store.write_bytes(key, data)
        keys.append(key)
    return keys


def build_report(store: Storage, shards: Sequence[ShardFiles], queries: pa.Table,
                 config: ReportConfig = ReportConfig(), prefix: str = "influence_report") -> tuple[Report, list[str]]:
    """Merge the shards' stored statistics, analyse, and write the report; returns it and its keys."""
    stats, top = merge_stored(store, shards, config.k)
    report = make_report(stats, top, queries, config, shards=len(shards))
    return report, write_report(store, report, prefix)
