"""Do reasoning queries share influential documents? Query-query correlations, by group of pairs."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import polars as pl
from matplotlib.figure import Figure

from pretrace.analyses.analysis import ANSWERS, Analysis
from pretrace.analyses.correlation import (
    GroupMeans,
    answered_group,
    group_means,
    pair_groups,
    same_kind_permutation_test,
)
from pretrace.analyses.report_config import REASONING
from pretrace.report.formatting import corr, interval
from pretrace.report.html import figure, table, with_ci
from pretrace.report.plots import empty, error_bars, png
from pretrace.report.section import Section

PAPER = (
    "Ruis et al. (2024) found that reasoning queries of the same kind share influential documents "
    "more than factual queries do"
)
COMPARISONS = (
    ("same reasoning kind", "different reasoning kinds"),
    ("same reasoning kind", "within factual"),
    ("same reasoning kind", "control vs others"),
    ("within factual", "control vs others"),
    (answered_group("same reasoning kind", "correctly"), answered_group("within factual", "correctly")),
)


@dataclass
class Correlation:
    matrix: np.ndarray  # (Q, Q) Pearson r in the order of the queries frame
    correlations: pl.DataFrame  # the matrix as (query_a, query_b, r) rows
    correlation_groups: pl.DataFrame  # mean r per group of pairs
    correlation_tests: pl.DataFrame  # differences between groups


def compute(a: Analysis) -> Correlation:
    """The correlation matrix, the mean r of each group of pairs and the differences between groups."""
    config = a.config
    kinds, cats = a.queries["kind"].to_list(), a.queries["category"].to_list()
    r = a.stats.correlation()
    ids = a.queries["id"].to_list()
    pairs = pl.DataFrame(
        {"query_a": np.repeat(ids, len(ids)).tolist(), "query_b": ids * len(ids), "r": r.ravel().tolist()}
    )
    masks = pair_groups(kinds, cats, a.answer_masks())
    gm = group_means(r, masks, kinds, config.bootstrap, config.seed)
    groups = pl.DataFrame(
        [
            {
                "group": name,
                "pairs": gm.pairs[name],
                "mean_r": gm.means[name],
                "ci_low": gm.interval(name, config.level)[0],
                "ci_high": gm.interval(name, config.level)[1],
            }
            for name in masks
        ],
        schema={
            "group": pl.String,
            "pairs": pl.Int64,
            "mean_r": pl.Float64,
            "ci_low": pl.Float64,
            "ci_high": pl.Float64,
        },
    )
    return Correlation(r, pairs, groups, _tests(a, r, gm))


def _tests(a: Analysis, r: np.ndarray, gm: GroupMeans) -> pl.DataFrame:
    config = a.config
    rows = []
    for first, second in COMPARISONS:
        if first not in gm.means or second not in gm.means:  # the model's answers were not checked
            continue
        diff, lo, hi = gm.difference(first, second, config.level)
        p = math.nan
        if (first, second) == COMPARISONS[0]:
            _, p = same_kind_permutation_test(
                r, a.queries["kind"].to_list(), a.queries["category"].to_list(), config.permutations, config.seed
            )
        rows.append(
            {"comparison": f"{first} - {second}", "difference": diff, "ci_low": lo, "ci_high": hi, "p_value": p}
        )
    return pl.DataFrame(
        rows,
        schema={
            "comparison": pl.String,
            "difference": pl.Float64,
            "ci_low": pl.Float64,
            "ci_high": pl.Float64,
            "p_value": pl.Float64,
        },
    )


def _resolved(value, lo, hi, null: float = 0.0) -> int:
    """+1 / -1 when the interval lies above / below ``null``, 0 when it does not resolve the sign."""
    if not all(x is not None and math.isfinite(x) for x in (value, lo, hi)):
        return 0
    return 1 if lo > null else -1 if hi < null else 0


def reading(a: Analysis) -> list[str]:
    c = a.result(compute)
    g = {r["group"]: r for r in c.correlation_groups.to_dicts()}
    t = {r["comparison"]: r for r in c.correlation_tests.to_dicts()}
    out = []
    same, diff, fact = g.get("same reasoning kind"), g.get("different reasoning kinds"), g.get("within factual")

    def describe(r):
        return f"mean r = {corr(r['mean_r'])} {interval(r['ci_low'], r['ci_high'], corr)}, {r['pairs']} pairs"

    if same and same["pairs"] and fact and fact["pairs"]:
        test = t["same reasoning kind - within factual"]
        d = f"difference {corr(test['difference'])} {interval(test['ci_low'], test['ci_high'], corr)}"
        sign = _resolved(test["difference"], test["ci_low"], test["ci_high"])
        if sign:
            out.append(
                f"Reasoning queries of the same kind correlate {'more' if sign > 0 else 'less'} "
                f"({describe(same)}) than factual queries do with each other ({describe(fact)}); {d}."
            )
        else:
            out.append(
                f"Reasoning queries of the same kind ({describe(same)}) and factual queries ({describe(fact)}) "
                f"cannot be told apart: the {d} includes zero, so these queries do not resolve it."
            )
    elif same and same["pairs"]:
        out.append(
            f"Reasoning queries of the same kind correlate with {describe(same)}; there are too few factual "
            "queries to compare against."
        )
    else:
        out.append("There are too few reasoning queries of one kind to measure how they correlate.")
    if same and diff and same["pairs"] and diff["pairs"]:
        test = t["same reasoning kind - different reasoning kinds"]
        sign = _resolved(test["difference"], test["ci_low"], test["ci_high"])
        p = test["p_value"]
        from pretrace.report.sections import adjusted_p  # the package corrects every test of the page

        p_holm = adjusted_p(a, SECTION.id, test["comparison"])
        p_text = (
            f"; label-permutation p = {p:.2g}, Holm-adjusted across the report's tests {p_holm:.2g}"
            if p is not None and math.isfinite(p)
            else ""
        )
        verdict = {1: "clearly lower than", -1: "clearly higher than", 0: "not clearly different from"}[sign]
        out.append(
            f"Across different reasoning kinds the mean correlation is {corr(diff['mean_r'])} "
            f"{interval(diff['ci_low'], diff['ci_high'], corr)}, {verdict} within a kind "
            f"(difference {corr(test['difference'])} {interval(test['ci_low'], test['ci_high'], corr)}{p_text})."
        )
    split = [
        f"{name} {describe(g[answered_group(name, answers)])}"
        for name in ("same reasoning kind", "within factual")
        for answers in ANSWERS
        if (g.get(answered_group(name, answers)) or {}).get("pairs")
    ]
    if split:
        test = t.get(COMPARISONS[-1][0] + " - " + COMPARISONS[-1][1])
        difference = (
            f"; same reasoning kind minus within factual, both answered correctly: {corr(test['difference'])} "
            f"{interval(test['ci_low'], test['ci_high'], corr)}"
            if test
            else ""
        )
        out.append(
            "Split by the model's own answers (pairs of queries both answered correctly, or both not): "
            + "; ".join(split)
            + difference
            + "."
        )
    ctl = g.get("control vs others")
    if ctl and ctl["pairs"]:
        out.append(
            f"Control queries correlate with the others at {corr(ctl['mean_r'])} "
            f"{interval(ctl['ci_low'], ctl['ci_high'], corr)}, a baseline for unrelated queries."
        )
    out.append(
        f"For comparison: {PAPER}. Intervals are {int(100 * a.config.level)}% bootstrap intervals over "
        "queries, resampled within each kind."
    )
    return out


def matrix_plot(a: Analysis) -> bytes:
    """Query-by-query Pearson r, queries grouped by kind, kind blocks outlined."""
    r = a.result(compute).matrix
    q = r.shape[0]
    fig = Figure(figsize=(7.5, 6.5))
    ax = fig.add_subplot()
    if q == 0:
        empty(ax)
        return png(fig)
    image = ax.imshow(np.nan_to_num(r, nan=0.0), cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
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


def groups_plot(a: Analysis) -> bytes:
    """Mean r per group of pairs with bootstrap intervals."""
    df = a.result(compute).correlation_groups.filter(pl.col("pairs") > 0)
    fig = Figure(figsize=(7.5, 0.45 * max(df.height, 2) + 1.2))
    ax = fig.add_subplot()
    if df.height == 0:
        empty(ax, "no pairs")
        return png(fig)
    y = np.arange(df.height)[::-1]
    mean = df["mean_r"].to_numpy()
    colors = [
        "#d62728"
        if g.startswith(("within ", "same")) and "factual" not in g
        else "#1f77b4"
        if "factual" in g
        else "0.45"
        for g in df["group"].to_list()
    ]
    ax.errorbar(
        mean,
        y,
        xerr=error_bars(mean, df["ci_low"].to_numpy(), df["ci_high"].to_numpy()),
        fmt="none",
        ecolor="0.3",
        capsize=3,
    )
    ax.scatter(mean, y, c=colors, zorder=3)
    ax.axvline(0, color="0.7", lw=1)
    ax.set_yticks(y, [f"{g} ({p})" for g, p in zip(df["group"].to_list(), df["pairs"].to_list())])
    ax.set_xlabel(f"mean Pearson r ({int(100 * a.config.level)}% bootstrap interval); pairs in brackets")
    ax.set_title("Do queries of the same kind share influential documents?")
    return png(fig)


def body(a: Analysis, figs: dict[str, bytes]) -> str:
    c = a.result(compute)
    groups = with_ci(c.correlation_groups, "mean_r", "ci_low", "ci_high", "mean r [interval]")
    tests = with_ci(c.correlation_tests, "difference", "ci_low", "ci_high", "difference [interval]")
    return (
        figure(
            "correlation_matrix",
            figs["correlation_matrix"],
            "Pearson correlation of document influence for every pair of queries, grouped by kind.",
        )
        + figure("correlation_groups", figs["correlation_groups"], "Mean correlation of groups of query pairs.")
        + table(
            groups,
            {"group": "pairs of queries", "pairs": "pairs", "mean r [interval]": "mean r [interval]"},
            text=("group",),
        )
        + table(
            tests,
            {"comparison": "comparison", "difference [interval]": "difference [interval]", "p_value": "permutation p"},
            text=("comparison",),
        )
    )


def headline(a: Analysis) -> dict[str, pl.DataFrame]:
    return {
        "correlation": a.result(compute).correlation_groups.select(["group", "pairs", "mean_r", "ci_low", "ci_high"])
    }


def tests(a: Analysis) -> list[dict]:
    """The label-permutation test of same-kind against cross-kind reasoning pairs."""
    return [
        {
            "test": "kind-label permutation test",
            "comparison": t["comparison"],
            "queries": int((a.queries["category"] == REASONING).sum()),
            "p": t["p_value"],
        }
        for t in a.result(compute).correlation_tests.to_dicts()
        if t["p_value"] is not None and math.isfinite(t["p_value"])
    ]


SECTION = Section(
    "correlation",
    "Do reasoning queries share influential documents?",
    body,
    reading,
    figures={"correlation_matrix": matrix_plot, "correlation_groups": groups_plot},
    compute=compute,
    headline=headline,
    tests=tests,
)
