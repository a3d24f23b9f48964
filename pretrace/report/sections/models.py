"""Do two models draw on the same documents? This model's influence against each compared model's
(`compare_models`), per shared query, as Ruis et al. compare their 7B and 35B models."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import polars as pl

from pretrace.analyses.analysis import Analysis
from pretrace.analyses.kinds import POOLED
from pretrace.analyses.model_comparison import COMPARISON_SCHEMA
from pretrace.report.formatting import interval, num
from pretrace.report.html import table, with_ci
from pretrace.report.section import Section

SCHEMA = {
    "model": pl.String,
    "kind": pl.String,
    "category": pl.String,
    "queries": pl.Int64,
    "k": pl.Int64,
    "mean_pearson": pl.Float64,
    "ci_low": pl.Float64,
    "ci_high": pl.Float64,
    "mean_top_overlap": pl.Float64,
    "mean_bottom_overlap": pl.Float64,
    "top_multiplier": pl.Float64,
    "bottom_multiplier": pl.Float64,
}


@dataclass
class Models:
    model_comparison: pl.DataFrame  # per query and compared model
    model_comparison_kinds: pl.DataFrame  # per compared model and kind


def _geometric_mean(values: np.ndarray) -> float:
    """Ratios average geometrically (2x and 0.5x cancel); non-positive or missing ones are left out."""
    values = values[np.isfinite(values) & (values > 0)]
    return float(np.exp(np.log(values).mean())) if values.size else math.nan


def compute(a: Analysis) -> Models:
    if a.comparison is None:
        return Models(
            pl.from_arrow(COMPARISON_SCHEMA.empty_table()).with_columns(kind=pl.lit(None, pl.String)),
            pl.DataFrame(schema=SCHEMA),
        )
    per_query = a.comparison.join(a.queries.select(pl.col("id").alias("query_id"), "kind"), on="query_id", how="inner")
    rows = []
    for model in per_query["model"].unique(maintain_order=True).to_list():
        mine = per_query.filter(pl.col("model") == model)
        for g in a.groups:
            sub = mine.filter(pl.col("query_id").is_in(g.ids))
            m, lo, hi = a.interval(sub["pearson"].to_numpy(), salt=21)
            rows.append(
                {
                    "model": model,
                    **g.row(),
                    "queries": sub.height,
                    "k": int(sub["k"].max() or 0),
                    "mean_pearson": m,
                    "ci_low": lo,
                    "ci_high": hi,
                    "mean_top_overlap": float(sub["top_overlap"].mean()) if sub.height else math.nan,
                    "mean_bottom_overlap": float(sub["bottom_overlap"].mean()) if sub.height else math.nan,
                    "top_multiplier": _geometric_mean(sub["top_multiplier"].to_numpy()),
                    "bottom_multiplier": _geometric_mean(sub["bottom_multiplier"].to_numpy()),
                }
            )
    return Models(per_query, pl.DataFrame(rows, schema=SCHEMA))


def reading(a: Analysis) -> list[str]:
    kinds = a.result(compute).model_comparison_kinds.filter(pl.col("kind") != POOLED)
    if kinds.is_empty():
        return [
            "No other model is compared with this one; name some under `compare_models` (for example a "
            "smaller or differently trained checkpoint) to see whether they draw on the same documents."
        ]
    out = []
    for model in kinds["model"].unique(maintain_order=True).to_list():
        rows = kinds.filter(pl.col("model") == model).to_dicts()
        k = rows[0]["k"]
        out.append(
            f"Against model {model}: per shared query, the two models' scores over the corpus correlate on average "
            + "; ".join(f"{r['kind']} r = {num(r['mean_pearson'])} {interval(r['ci_low'], r['ci_high'])}" for r in rows)
            + f". Of this model's top {k} documents, "
            + "; ".join(f"{r['kind']} {num(r['mean_top_overlap'], 1)}" for r in rows)
            + f" are also among {model}'s top {k} on average; {model}'s top documents are "
            + "; ".join(f"{r['kind']} {num(r['top_multiplier'])}\u00d7" for r in rows)
            + " as influential as this model's, and its bottom documents "
            + "; ".join(f"{r['kind']} {num(r['bottom_multiplier'])}\u00d7" for r in rows)
            + " as negative (geometric means over queries)."
        )
    return out


def body(a: Analysis, figs: dict[str, bytes]) -> str:
    kinds = a.result(compute).model_comparison_kinds
    if kinds.is_empty():
        return ""
    return (
        table(
            with_ci(kinds, "mean_pearson", "ci_low", "ci_high", "r"),
            {
                "model": "compared model",
                "kind": "kind",
                "queries": "queries",
                "r": "mean Pearson r [interval]",
                "k": "k",
                "mean_top_overlap": "top-k overlap (mean)",
                "mean_bottom_overlap": "bottom-k overlap (mean)",
                "top_multiplier": "top-k multiplier",
                "bottom_multiplier": "bottom-k multiplier",
            },
            text=("model", "kind"),
        )
        + "<p>Pearson r: the correlation of the two models' scores for the same query over every document "
        "(Ruis et al. compare their 7B and 35B models so). Overlap: documents in both models' top (bottom) k. "
        "Multiplier (pretrace's summary): the mean score of the compared model's top (bottom) k documents over "
        "this model's, as a geometric mean over queries; above 1, the compared model's extremes are stronger.</p>"
    )


def headline(a: Analysis) -> dict[str, pl.DataFrame]:
    kinds = a.result(compute).model_comparison_kinds
    return (
        {}
        if kinds.is_empty()
        else {
            "model_comparison": kinds.filter(pl.col("kind") != POOLED).select(
                ["model", "kind", "queries", "mean_pearson", "mean_top_overlap", "top_multiplier", "bottom_multiplier"]
            )
        }
    )


SECTION = Section(
    "models", "Do other models draw on the same documents?", body, reading, compute=compute, headline=headline
)
