"""The report's plots as PNG bytes (matplotlib's object API: no pyplot, no global backend)."""

from __future__ import annotations

import io
import math

import numpy as np
import polars as pl
from matplotlib.figure import Figure

from .analysis import POOLED, Analysis
from .concentration import share_curve

DPI = 90
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
           "#7f7f7f"]


def kind_colors(kinds: list[str]) -> dict[str, str]:
    return {k: PALETTE[i % len(PALETTE)] for i, k in enumerate(kinds)}


def png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return buffer.getvalue()


def _empty(ax, text: str = "no data") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def correlation_matrix(a: Analysis) -> bytes:
    """Query-by-query Pearson r, queries grouped by kind, kind blocks outlined."""
    q = a.correlation.shape[0]
    fig = Figure(figsize=(7.5, 6.5))
    ax = fig.add_subplot()
    if q == 0:
        _empty(ax)
        return png(fig)
    image = ax.imshow(np.nan_to_num(a.correlation, nan=0.0), cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.8, label="Pearson r over documents")
    kinds = a.queries["kind"].to_list()
    starts = [i for i in range(q) if i == 0 or kinds[i] != kinds[i - 1]] + [q]
    centres = [(starts[j] + starts[j + 1] - 1) / 2 for j in range(len(starts) - 1)]
    for s in starts[1:-1]:
        ax.axhline(s - 0.5, color="k", lw=1)
        ax.axvline(s - 0.5, color="k", lw=1)
    labels = [kinds[s] for s in starts[:-1]]
    ax.set_xticks(centres, labels, rotation=30, ha="right")
    ax.set_yticks(centres, labels)
    ax.set_title("Correlation of document influence between queries")
    return png(fig)


def correlation_groups(a: Analysis) -> bytes:
    """Mean r per group of pairs with bootstrap intervals."""
    df = a.correlation_groups.filter(pl.col("pairs") > 0)
    fig = Figure(figsize=(7.5, 0.45 * max(df.height, 2) + 1.2))
    ax = fig.add_subplot()
    if df.height == 0:
        _empty(ax, "no pairs")
        return png(fig)
    y = np.arange(df.height)[::-1]
    mean = df["mean_r"].to_numpy()
    lo = np.nan_to_num(mean - df["ci_low"].to_numpy(), nan=0.0)
    hi = np.nan_to_num(df["ci_high"].to_numpy() - mean, nan=0.0)
    colors = ["#d62728" if g.startswith(("within ", "same")) and "factual" not in g else
              "#1f77b4" if "factual" in g else "0.45" for g in df["group"].to_list()]
    ax.errorbar(mean, y, xerr=[lo, hi], fmt="none", ecolor="0.3", capsize=3)
    ax.scatter(mean, y, c=colors, zorder=3)
    ax.axvline(0, color="0.7", lw=1)
    ax.set_yticks(y, [f"{g} ({p})" for g, p in zip(df["group"].to_list(), df["pairs"].to_list())])
    ax.set_xlabel(f"mean Pearson r ({int(100 * a.config.level)}% bootstrap interval); pairs in brackets")
    ax.set_title("Do queries of the same kind share influential documents?")
    return png(fig)


def magnitude(a: Analysis) -> bytes:
    """Total positive and absolute influence per nat by kind, and per nat of the top fractions."""
    fig = Figure(figsize=(13, 4))
    kinds = a.kind_order
    colors = kind_colors(kinds)
    rng = np.random.default_rng(0)
    for i, (col, title) in enumerate((("positive_per_nat", "positive influence per nat"),
                                      ("absolute_per_nat", "absolute influence per nat"))):
        ax = fig.add_subplot(1, 3, i + 1)
        values = a.magnitude[col].to_numpy()
        if not np.isfinite(values).any():
            _empty(ax, "no log-probabilities")
            continue
        for j, kind in enumerate(kinds):
            v = a.magnitude.filter(pl.col("kind") == kind)[col].to_numpy()
            v = v[np.isfinite(v)]
            ax.scatter(j + rng.uniform(-0.15, 0.15, v.size), v, s=14, alpha=0.7, color=colors[kind])
            row = a.magnitude_kinds.filter(pl.col("kind") == kind).row(0, named=True)
            m, lo, hi = row[f"{col}_mean"], row[f"{col}_ci_low"], row[f"{col}_ci_high"]
            if m is not None and math.isfinite(m):
                err = [[m - lo], [hi - m]] if math.isfinite(lo) and math.isfinite(hi) else None
                ax.errorbar([j + 0.3], [m], yerr=err, fmt="D", color="k", ms=4, capsize=3)
        if (values[np.isfinite(values)] > 0).all():
            ax.set_yscale("log")
        ax.set_xticks(range(len(kinds)), kinds, rotation=30, ha="right")
        ax.set_title(title)
    ax = fig.add_subplot(1, 3, 3)
    df = a.magnitude_fractions.filter((pl.col("kind") != POOLED) & pl.col("mean_per_nat").is_finite())
    if df.height:
        for kind in kinds:
            sub = df.filter(pl.col("kind") == kind).sort("fraction")
            if sub.height:
                ax.plot(sub["fraction"].to_numpy() * 100, sub["mean_per_nat"].to_numpy(), "o-", color=colors[kind],
                        label=kind)
        ax.set_xscale("log")
        if (df["mean_per_nat"] > 0).all():
            ax.set_yscale("log")
        ax.set_xlabel("top % of documents")
        ax.set_title("positive influence of the top documents per nat")
        ax.legend(fontsize=8)
    else:
        _empty(ax, "no log-probabilities")
    fig.suptitle("Influence per nat of completion information (dots: queries; diamonds: mean and interval)")
    return png(fig)


def concentration(a: Analysis) -> bytes:
    """Cumulative share of positive influence against the top fraction of documents."""
    fig = Figure(figsize=(7.5, 4.5))
    ax = fig.add_subplot()
    colors = kind_colors(a.kind_order)
    kinds = a.queries["kind"].to_list()
    curves: dict[str, list[np.ndarray]] = {}
    x = None
    for q, kind in enumerate(kinds):
        if a.stats.positive_sum[q] <= 0:
            continue
        x, y = share_curve(a.stats, q)
        ax.plot(x, y, color=colors[kind], lw=0.6, alpha=0.35)
        curves.setdefault(kind, []).append(y)
    if x is None:
        _empty(ax, "no positive influence")
        return png(fig)
    for kind, ys in curves.items():
        ax.plot(x, np.nanmean(ys, axis=0), color=colors[kind], lw=2.2, label=f"{kind} (mean of {len(ys)})")
    for f in a.config.fractions:
        ax.axvline(f, color="0.85", lw=0.8, zorder=0)
    ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("top fraction of documents")
    ax.set_ylabel("share of total positive influence")
    ax.set_title("How concentrated is positive influence?")
    ax.legend(fontsize=8, loc="upper left")
    return png(fig)


def power_law(a: Analysis) -> bytes:
    """Score against rank on log-log axes for the top ranks, with each kind's mean fitted line."""
    fig = Figure(figsize=(10, 4.5))
    ax = fig.add_subplot(1, 2, 1)
    colors = kind_colors(a.kind_order)
    kinds = a.queries["kind"].to_list()
    fits = a.power_law.to_dicts()
    drawn = False
    for q, kind in enumerate(kinds):
        v = a.stats.top_values[q].astype(np.float64)[: fits[q]["ranks"]]
        v = v[v > 0]
        if v.size < 2:
            continue
        ranks = np.arange(1, v.size + 1)
        ax.plot(ranks, v, color=colors[kind], lw=0.7, alpha=0.5)
        fit = fits[q]
        if math.isfinite(fit["slope"]):
            ax.plot(ranks, np.exp(fit["intercept"]) * ranks ** fit["slope"], color=colors[kind], lw=0.6, ls=":")
        drawn = True
    if drawn:
        ax.set_xscale("log")
        ax.set_yscale("log")
        for kind in a.kind_order:
            ax.plot([], [], color=colors[kind], label=kind)
        ax.legend(fontsize=8)
        ax.set_xlabel("rank")
        ax.set_ylabel("influence score")
        ax.set_title("Top of each ranking (dotted: power-law fit)")
    else:
        _empty(ax, "no positive scores")
    ax2 = fig.add_subplot(1, 2, 2)
    df = a.power_law_kinds.filter(pl.col("kind") != POOLED)
    rng = np.random.default_rng(1)
    if a.power_law["slope"].is_finite().any():
        for j, kind in enumerate(df["kind"].to_list()):
            s = a.power_law.filter(pl.col("kind") == kind)["slope"].to_numpy()
            s = s[np.isfinite(s)]
            ax2.scatter(j + rng.uniform(-0.15, 0.15, s.size), s, s=14, alpha=0.7, color=colors[kind])
            row = df.row(j, named=True)
            if math.isfinite(row["mean_slope"]) and math.isfinite(row["ci_low"] or math.nan):
                ax2.errorbar([j + 0.3], [row["mean_slope"]], yerr=[[row["mean_slope"] - row["ci_low"]],
                                                                   [row["ci_high"] - row["mean_slope"]]],
                             fmt="D", color="k", ms=4, capsize=3)
        ax2.set_xticks(range(df.height), df["kind"].to_list(), rotation=30, ha="right")
        ax2.set_ylabel("slope of log score vs log rank")
        ax2.set_title("Power-law slope per query")
    else:
        _empty(ax2, "no fits")
    return png(fig)


def answers(a: Analysis) -> bytes:
    """Share of queries whose answer is in the top k, and of intermediate results found, by kind."""
    df = a.answers_kinds.filter(pl.col("kind") != POOLED)
    fig = Figure(figsize=(7.5, 4))
    ax = fig.add_subplot()
    if df.height == 0 or df["queries_with_answer"].sum() == 0:
        _empty(ax, "no answers to search for")
        return png(fig)
    x = np.arange(df.height)
    share = np.nan_to_num(df["share_answer_in_top"].to_numpy(), nan=0.0)
    lo = np.clip(share - np.nan_to_num(df["ci_low"].to_numpy(), nan=0.0), 0, None)
    hi = np.clip(np.nan_to_num(df["ci_high"].to_numpy(), nan=0.0) - share, 0, None)
    ax.bar(x - 0.2, share, 0.4, yerr=[lo, hi], capsize=3, color="#1f77b4", label="final answer in top k")
    inter = np.nan_to_num(df["share_intermediates_in_top"].to_numpy(), nan=0.0)
    ax.bar(x + 0.2, inter, 0.4, color="#ff7f0e", label="intermediate results in top k")
    ax.set_xticks(x, df["kind"].to_list(), rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("share of queries / of intermediate results")
    ax.set_title(f"Answers found in the top {a.config.k} documents")
    ax.legend(fontsize=8)
    return png(fig)


def sources(a: Analysis) -> bytes:
    """Over/under-representation (log2 ratio) of each source in the top and bottom k of each kind."""
    df = a.sources.filter(pl.col("kind") != POOLED)
    names = sorted(set(df["source"].to_list()))
    rows = [(k, s) for k in a.kind_order for s in ("top", "bottom")]
    fig = Figure(figsize=(max(6, 1.1 * len(names) + 2.5), 0.42 * max(len(rows), 2) + 1.6))
    ax = fig.add_subplot()
    if not names or not rows:
        _empty(ax)
        return png(fig)
    grid = np.full((len(rows), len(names)), np.nan)
    ratios = {(r["kind"], r["side"], r["source"]): r["ratio"] for r in df.to_dicts()}
    for i, (k, side) in enumerate(rows):
        for j, s in enumerate(names):
            v = ratios.get((k, side, s))
            if v is not None and math.isfinite(v):
                grid[i, j] = v
    with np.errstate(divide="ignore"):
        logs = np.log2(np.where(grid > 0, grid, 1 / 16))
    image = ax.imshow(np.clip(np.nan_to_num(logs), -4, 4), cmap="PuOr_r", vmin=-4, vmax=4, aspect="auto")
    fig.colorbar(image, ax=ax, label="log2(share in top/bottom k ÷ share in corpus)")
    for i in range(len(rows)):
        for j in range(len(names)):
            if math.isfinite(grid[i, j]):
                dark = abs(np.clip(logs[i, j], -4, 4)) > 2.5
                ax.text(j, i, f"{grid[i, j]:.2g}", ha="center", va="center", fontsize=7,
                        color="white" if dark else "black")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), [f"{k} · {s}" for k, s in rows])
    ax.set_title("Sources of influential documents relative to the corpus")
    return png(fig)


FIGURES = {
    "correlation_matrix": correlation_matrix,
    "correlation_groups": correlation_groups,
    "magnitude": magnitude,
    "concentration": concentration,
    "power_law": power_law,
    "answers": answers,
    "sources": sources,
}


def render_all(a: Analysis) -> dict[str, bytes]:
    return {name: draw(a) for name, draw in FIGURES.items()}
