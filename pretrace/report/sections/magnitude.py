"""How much influence per nat of information? Total influence of each query over the completion's
information, -log p(completion | prompt), compared between reasoning and factual queries."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import polars as pl
from matplotlib.figure import Figure

from pretrace.analyses import concentration as conc
from pretrace.analyses.analysis import ALL_QUERIES, ANSWERED_CORRECTLY, Analysis
from pretrace.analyses.kinds import POOLED, reasoning_label
from pretrace.analyses.report_config import FACTUAL, REASONING
from pretrace.report.formatting import interval, num
from pretrace.report.html import figure, table, with_ci
from pretrace.report.plots import empty, error_bars, kind_colors, png
from pretrace.report.section import Section
from pretrace.report.sections import concentration

MEASURES = ("positive_per_nat", "absolute_per_nat")
CURVES_CAPTION = (
    "As Ruis et al. (2024) define influence per nat: each score divided by the query's nats, then the summed "
    "influence of the top p% of the query's positively influential documents (left) and of its negatively "
    "influential ones (right), averaged over the queries of a kind. Table magnitude_curves.parquet also gives "
    "the sums over the top 1, 10, 100, ... documents (by = documents), with the histogram's error bound beyond "
    "the exact top list. The 100% point on the left is the positive-per-nat total of the table above."
)


@dataclass
class Magnitude:
    magnitude: pl.DataFrame  # per query
    magnitude_kinds: pl.DataFrame  # mean and median per nat per kind
    magnitude_comparison: pl.DataFrame  # reasoning over factual, per measure
    magnitude_fractions: pl.DataFrame  # positive influence of the top fraction of documents, per nat, by kind
    magnitude_curves: pl.DataFrame  # Ruis et al.'s curves: top p% (or top k) of each side, per nat, by kind


def _median(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    return float(np.median(values)) if values.size else math.nan


def compute(a: Analysis) -> Magnitude:
    """Influence per nat per query, by kind, reasoning over factual, and per nat of the top fractions."""
    q = a.queries
    nats = -q["logprob"].cast(pl.Float64).to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        nats_ok = np.where(nats > 1e-9, nats, np.nan)
        per_query = pl.DataFrame(
            {
                "query_id": q["id"],
                "kind": q["kind"],
                "category": q["category"],
                "nats": nats,
                "positive": a.stats.positive_sum,
                "absolute": a.stats.abs_sum,
                "positive_per_nat": a.stats.positive_sum / nats_ok,
                "absolute_per_nat": a.stats.abs_sum / nats_ok,
            }
        )
    rows = []
    for g in a.groups:
        row = {**g.row(), "queries": int(g.mask.sum())}
        for col in MEASURES:
            values = per_query[col].to_numpy()[g.mask]
            m, lo, hi = a.interval(values, salt=3)
            row |= {f"{col}_mean": m, f"{col}_ci_low": lo, f"{col}_ci_high": hi, f"{col}_median": _median(values)}
        rows.append(row)
    return Magnitude(
        per_query, pl.DataFrame(rows), _comparison(a, per_query), _fractions(a, per_query), _curves(a, per_query)
    )


def _comparison(a: Analysis, per_query: pl.DataFrame) -> pl.DataFrame:
    """Mean influence per nat of reasoning queries over that of factual queries, with an interval,
    on all queries and on those the model answers correctly."""
    draws, level, rng = a.config.bootstrap, a.config.level, a.rng(4)
    rows = []
    for subset, keep in a.answer_subsets().items():
        mine = per_query.filter(pl.Series(keep))
        for col in MEASURES:
            f = mine.filter(pl.col("category") == FACTUAL)[col].to_numpy()
            r = mine.filter(pl.col("category") == REASONING)[col].to_numpy()
            f, r = f[np.isfinite(f)], r[np.isfinite(r)]
            ratio = lo = hi = math.nan
            if f.size and r.size and f.mean() > 0:
                ratio = float(r.mean() / f.mean())
                if f.size > 1 and r.size > 1:
                    boot_f = f[rng.integers(0, f.size, size=(draws, f.size))].mean(axis=1)
                    boot_r = r[rng.integers(0, r.size, size=(draws, r.size))].mean(axis=1)
                    with np.errstate(divide="ignore", invalid="ignore"):
                        ratios = boot_r / boot_f
                    lo, hi = (
                        float(x) for x in np.quantile(ratios[np.isfinite(ratios)], [(1 - level) / 2, (1 + level) / 2])
                    )
            rows.append(
                {
                    "queries": subset,
                    "measure": col,
                    "factual_queries": int(f.size),
                    "reasoning_queries": int(r.size),
                    "factual_mean": float(f.mean()) if f.size else math.nan,
                    "reasoning_mean": float(r.mean()) if r.size else math.nan,
                    "reasoning_over_factual": ratio,
                    "ci_low": lo,
                    "ci_high": hi,
                }
            )
    return pl.DataFrame(rows)


def _fractions(a: Analysis, per_query: pl.DataFrame) -> pl.DataFrame:
    """Per nat, the positive influence of the top fractions of documents (share times total), by kind."""
    per_nat = (
        a.result(concentration.compute)
        .concentration.join(
            per_query.select(["query_id", "positive_per_nat"]),
            on="query_id",
        )
        .with_columns(top_per_nat=pl.col("share") * pl.col("positive_per_nat"))
    )
    rows = []
    for g in a.groups:
        for f in a.config.fractions:
            v = per_nat.filter(pl.col("query_id").is_in(g.ids) & (pl.col("fraction") == f))["top_per_nat"].to_numpy()
            m, lo, hi = a.interval(v, salt=7)
            rows.append({**g.row(), "fraction": f, "mean_per_nat": m, "ci_low": lo, "ci_high": hi})
    return pl.DataFrame(
        rows,
        schema={
            "kind": pl.String,
            "category": pl.String,
            "fraction": pl.Float64,
            "mean_per_nat": pl.Float64,
            "ci_low": pl.Float64,
            "ci_high": pl.Float64,
        },
    )


def _curves(a: Analysis, per_query: pl.DataFrame) -> pl.DataFrame:
    """As Ruis et al. define influence per nat: every score divided by the query's nats, then, for
    the top p% of each query's positively (and, apart, negatively) influential documents, the summed
    influence, averaged over the queries of a kind; and the same for the top k documents."""
    sums = pl.DataFrame(conc.side_sums(a.stats)).join(per_query.select(["query_id", "nats"]), on="query_id")
    sums = sums.with_columns(per_nat=pl.col("total") / pl.col("nats"), error_per_nat=pl.col("error") / pl.col("nats"))
    sums = sums.filter(pl.col("per_nat").is_finite())
    rows = []
    for (side, by, at), sub in sums.group_by(["side", "by", "at"], maintain_order=True):
        for g in a.groups:
            values = sub.filter(pl.col("query_id").is_in(g.ids))
            m, lo, hi = a.interval(values["per_nat"].to_numpy(), salt=8)
            rows.append(
                {
                    **g.row(),
                    "side": side,
                    "by": by,
                    "at": at,
                    "queries": values.height,
                    "mean_per_nat": m,
                    "ci_low": lo,
                    "ci_high": hi,
                    "max_error_per_nat": float(values["error_per_nat"].max() or 0.0),
                }
            )
    schema = {
        "kind": pl.String,
        "category": pl.String,
        "side": pl.String,
        "by": pl.String,
        "at": pl.Float64,
        "queries": pl.Int64,
        "mean_per_nat": pl.Float64,
        "ci_low": pl.Float64,
        "ci_high": pl.Float64,
        "max_error_per_nat": pl.Float64,
    }
    return pl.DataFrame(rows, schema=schema)


def _row(df: pl.DataFrame, column: str, value) -> dict | None:
    rows = df.filter(pl.col(column) == value).to_dicts()
    return rows[0] if rows else None


def reading(a: Analysis) -> list[str]:
    m = a.result(compute)
    out = []
    everyone = m.magnitude_comparison.filter(pl.col("queries") == ALL_QUERIES)
    cmp = _row(everyone, "measure", "positive_per_nat")
    fact_rows = m.magnitude_kinds.filter(pl.col("category") == FACTUAL).to_dicts()
    label = reasoning_label(a.groups)
    reas = _row(m.magnitude_kinds, "kind", label) if label else None
    if cmp and fact_rows and reas and math.isfinite(cmp["reasoning_over_factual"]):
        ratio, lo, hi = cmp["reasoning_over_factual"], cmp["ci_low"], cmp["ci_high"]
        if math.isfinite(lo) and lo > 1:
            verdict = "more"
        elif math.isfinite(hi) and hi < 1:
            verdict = "less"
        else:
            verdict = "about as much (the interval includes equality)"
        out.append(
            f"Per nat of completion information, reasoning queries receive {verdict} total positive influence "
            f"than factual queries: mean {num(cmp['reasoning_mean'], 3)} vs {num(cmp['factual_mean'], 3)}, "
            f"ratio {num(ratio)} {interval(lo, hi)}."
        )
    else:
        out.append("There are not both factual and reasoning queries with a known log-probability to compare.")
    correct = _row(
        m.magnitude_comparison.filter(pl.col("queries") == ANSWERED_CORRECTLY), "measure", "positive_per_nat"
    )
    if correct and math.isfinite(correct["reasoning_over_factual"]):
        out.append(
            f"On the queries the model answers correctly ({correct['factual_queries']} factual, "
            f"{correct['reasoning_queries']} reasoning) the ratio is {num(correct['reasoning_over_factual'])} "
            f"{interval(correct['ci_low'], correct['ci_high'])}."
        )
    abs_cmp = _row(everyone, "measure", "absolute_per_nat")
    if abs_cmp and math.isfinite(abs_cmp["reasoning_over_factual"]):
        out.append(
            f"Counting negative influence too (absolute influence per nat) the ratio is "
            f"{num(abs_cmp['reasoning_over_factual'])} {interval(abs_cmp['ci_low'], abs_cmp['ci_high'])}."
        )
    out.append(
        "Ruis et al. (2024) found that, per nat, reasoning relies less on individual documents than factual "
        "recall does: a ratio below 1."
    )
    return out


def plot(a: Analysis) -> bytes:
    """Total positive and absolute influence per nat by kind, and per nat of the top fractions."""
    m = a.result(compute)
    fig = Figure(figsize=(13, 4))
    kinds = a.kind_order
    colors = kind_colors(kinds)
    rng = np.random.default_rng(0)
    for i, (col, title) in enumerate(zip(MEASURES, ("positive influence per nat", "absolute influence per nat"))):
        ax = fig.add_subplot(1, 3, i + 1)
        values = m.magnitude[col].to_numpy()
        if not np.isfinite(values).any():
            empty(ax, "no log-probabilities")
            continue
        for j, kind in enumerate(kinds):
            v = m.magnitude.filter(pl.col("kind") == kind)[col].to_numpy()
            v = v[np.isfinite(v)]
            ax.scatter(j + rng.uniform(-0.15, 0.15, v.size), v, s=14, alpha=0.7, color=colors[kind])
            row = m.magnitude_kinds.filter(pl.col("kind") == kind).row(0, named=True)
            mean, lo, hi = row[f"{col}_mean"], row[f"{col}_ci_low"], row[f"{col}_ci_high"]
            if mean is not None and math.isfinite(mean):
                ax.errorbar([j + 0.3], [mean], yerr=error_bars(mean, lo, hi), fmt="D", color="k", ms=4, capsize=3)
        if (values[np.isfinite(values)] > 0).all():
            ax.set_yscale("log")
        ax.set_xticks(range(len(kinds)), kinds, rotation=30, ha="right")
        ax.set_title(title)
    ax = fig.add_subplot(1, 3, 3)
    df = m.magnitude_fractions.filter((pl.col("kind") != POOLED) & pl.col("mean_per_nat").is_finite())
    if df.height:
        for kind in kinds:
            sub = df.filter(pl.col("kind") == kind).sort("fraction")
            if sub.height:
                ax.plot(
                    sub["fraction"].to_numpy() * 100,
                    sub["mean_per_nat"].to_numpy(),
                    "o-",
                    color=colors[kind],
                    label=kind,
                )
        ax.set_xscale("log")
        if (df["mean_per_nat"] > 0).all():
            ax.set_yscale("log")
        ax.set_xlabel("top % of documents")
        ax.set_title("positive influence of the top documents per nat")
        ax.legend(fontsize=8)
    else:
        empty(ax, "no log-probabilities")
    fig.suptitle("Influence per nat of completion information (dots: queries; diamonds: mean and interval)")
    return png(fig)


def plot_curves(a: Analysis) -> bytes:
    """Ruis et al.'s curves: mean summed influence per nat of the top p% of each side, by kind."""
    curves = a.result(compute).magnitude_curves.filter((pl.col("by") == "percentile") & (pl.col("kind") != POOLED))
    fig = Figure(figsize=(11, 4))
    colors = kind_colors(a.kind_order)
    for i, side in enumerate(("positive", "negative")):
        ax = fig.add_subplot(1, 2, i + 1)
        df = curves.filter((pl.col("side") == side) & pl.col("mean_per_nat").is_finite())
        if not df.height:
            empty(ax, "no log-probabilities")
            continue
        for kind in a.kind_order:
            sub = df.filter(pl.col("kind") == kind).sort("at")
            if sub.height:
                ax.plot(
                    sub["at"].to_numpy(), sub["mean_per_nat"].to_numpy(), "o-", ms=3, color=colors[kind], label=kind
                )
        ax.set_xlabel(f"top % of the {side}ly influential documents")
        ax.set_title(f"summed {side} influence per nat")
        ax.legend(fontsize=8)
    fig.suptitle("Influence per nat over the top percentiles of each ranking (mean over a kind's queries)")
    return png(fig)


def body(a: Analysis, figs: dict[str, bytes]) -> str:
    m = a.result(compute)
    df = with_ci(
        m.magnitude_kinds, "positive_per_nat_mean", "positive_per_nat_ci_low", "positive_per_nat_ci_high", "positive"
    )
    df = with_ci(df, "absolute_per_nat_mean", "absolute_per_nat_ci_low", "absolute_per_nat_ci_high", "absolute")
    smaller = m.magnitude_comparison.with_columns(n=pl.min_horizontal("factual_queries", "reasoning_queries"))
    cmp = with_ci(smaller, "reasoning_over_factual", "ci_low", "ci_high", "ratio", n="n")
    return (
        figure(
            "magnitude",
            figs["magnitude"],
            "Total influence per query divided by the completion's information, -log p(completion | prompt) in nats.",
        )
        + table(
            df,
            {
                "kind": "kind",
                "queries": "queries",
                "positive": "mean positive per nat [interval]",
                "positive_per_nat_median": "median positive per nat",
                "absolute": "mean absolute per nat [interval]",
            },
            text=("kind",),
        )
        + table(
            cmp,
            {
                "queries": "queries",
                "measure": "measure",
                "factual_queries": "factual (n)",
                "reasoning_queries": "reasoning (n)",
                "factual_mean": "factual mean",
                "reasoning_mean": "reasoning mean",
                "ratio": "reasoning ÷ factual [interval]",
            },
            text=("queries", "measure"),
        )
        + figure("magnitude_curves", figs["magnitude_curves"], CURVES_CAPTION)
    )


def headline(a: Analysis) -> dict[str, pl.DataFrame]:
    return {
        "magnitude_per_nat": a.result(compute).magnitude_kinds.select(
            [
                "kind",
                "queries",
                "positive_per_nat_mean",
                "positive_per_nat_ci_low",
                "positive_per_nat_ci_high",
                "absolute_per_nat_mean",
            ]
        )
    }


SECTION = Section(
    "magnitude",
    "How much influence per nat of information?",
    body,
    reading,
    figures={"magnitude": plot, "magnitude_curves": plot_curves},
    compute=compute,
    headline=headline,
)
