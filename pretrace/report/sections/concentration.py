"""How concentrated is influence? Shares of positive influence held by the top documents, and
power-law fits of influence against rank (the estimates themselves: ``report.concentration``)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import polars as pl
from matplotlib.figure import Figure

from pretrace.analyses import concentration as conc
from pretrace.analyses.analysis import ALL_QUERIES, Analysis
from pretrace.analyses.kinds import POOLED
from pretrace.analyses.report_config import FACTUAL, REASONING
from pretrace.report.formatting import interval, num, pct
from pretrace.report.html import figure, table, wide_table, with_ci
from pretrace.report.plots import empty, error_bars, kind_colors, png
from pretrace.report.section import Section

FIT_DEFINITIONS = {
    "paper": f"Ruis et al.: least squares on log-log, ranks 1-{conc.PAPER_RANKS}",
    "head": f"least squares on log-log, ranks 1-min({conc.FIT_RANKS}, max(10, positive documents / 10))",
    "mle": f"maximum likelihood (Clauset et al.), x_min at the rank (of at most {conc.FIT_RANKS}) of smallest KS distance",
}


@dataclass
class Concentration:
    concentration: pl.DataFrame  # share per query and fraction of documents
    concentration_kinds: pl.DataFrame  # mean share per kind and fraction
    power_law: pl.DataFrame  # fit per query and definition
    power_law_kinds: pl.DataFrame  # mean slope per kind and definition
    power_law_test: pl.DataFrame  # Welch's t-test of factual against reasoning slopes, per definition and subset


def _with_kind(a: Analysis, rows: list[dict]) -> pl.DataFrame:
    kind_of = dict(zip(a.queries["id"].to_list(), a.queries["kind"].to_list()))
    return pl.DataFrame(rows).with_columns(kind=pl.col("query_id").replace_strict(kind_of, return_dtype=pl.String))


def compute(a: Analysis) -> Concentration:
    """Top-fraction shares and power-law fits, per query and by kind."""
    shares = _with_kind(a, conc.shares(a.stats, a.config.fractions)).select(
        ["query_id", "kind", "fraction", "documents", "share", "share_error", "exact"]
    )
    rows = []
    for g in a.groups:
        for f in a.config.fractions:
            sub = shares.filter(pl.col("query_id").is_in(g.ids) & (pl.col("fraction") == f))
            m, lo, hi = a.interval(sub["share"].to_numpy(), salt=5)
            rows.append(
                {
                    **g.row(),
                    "fraction": f,
                    "documents": int(sub["documents"].max() or 0),
                    "mean_share": m,
                    "ci_low": lo,
                    "ci_high": hi,
                    "max_share_error": float(sub["share_error"].max() or 0.0),
                }
            )
    fits = _with_kind(a, conc.power_laws(a.stats, a.config.fit_ranks)).select(
        ["query_id", "kind", "fit", "slope", "intercept", "r2", "ranks"]
    )
    fit_rows, tests = [], []
    category = a.queries["category"].to_numpy()
    for name in conc.FITS:
        mine = fits.filter(pl.col("fit") == name)  # one row per query, in report order
        for g in a.groups:
            slope, lo, hi = a.interval(mine["slope"].to_numpy()[g.mask], salt=6)
            r2 = mine["r2"].to_numpy()[g.mask]
            fit_rows.append(
                {
                    "fit": name,
                    **g.row(),
                    "queries": int(g.mask.sum()),
                    "mean_slope": slope,
                    "ci_low": lo,
                    "ci_high": hi,
                    "mean_r2": float(np.nanmean(r2)) if np.isfinite(r2).any() else math.nan,
                }
            )
        for subset, keep in a.answer_subsets().items():
            slopes = {c: mine["slope"].to_numpy()[(category == c) & keep] for c in (FACTUAL, REASONING)}
            test = conc.welch_test(slopes[FACTUAL], slopes[REASONING])
            tests.append(
                {
                    "fit": name,
                    "definition": FIT_DEFINITIONS[name],
                    "queries": subset,
                    "factual_queries": int(np.isfinite(slopes[FACTUAL]).sum()),
                    "reasoning_queries": int(np.isfinite(slopes[REASONING]).sum()),
                    **vars(test),
                }
            )
    return Concentration(shares, pl.DataFrame(rows), fits, pl.DataFrame(fit_rows), pl.DataFrame(tests))


def reading(a: Analysis) -> list[str]:
    c = a.result(compute)
    out = []
    fractions = sorted(a.config.fractions)
    f = 0.01 if 0.01 in fractions else fractions[len(fractions) // 2]
    parts = []
    for r in c.concentration_kinds.filter(pl.col("fraction") == f).to_dicts():
        if r["kind"] == POOLED:
            continue
        parts.append(f"{r['kind']} {pct(r['mean_share'])} {interval(r['ci_low'], r['ci_high'], pct)}")
    if parts:
        out.append(
            f"The top {pct(f, 2 if f < 0.01 else 0)} of documents hold on average this share of a query's total "
            "positive influence: " + "; ".join(parts) + "."
        )
    fit = c.power_law.filter((pl.col("fit") == "paper") & pl.col("slope").is_finite())
    if fit.height:
        r2 = float(fit["r2"].mean())
        quality = "closely" if r2 >= 0.95 else "reasonably" if r2 >= 0.85 else "only loosely"
        kinds = "; ".join(
            f"{r['kind']} {num(r['mean_slope'])} {interval(r['ci_low'], r['ci_high'])}"
            for r in c.power_law_kinds.filter(pl.col("fit") == "paper").to_dicts()
            if r["kind"] != POOLED
        )
        out.append(
            f"Over the top {int(fit['ranks'].max())} ranks of each ranking (Ruis et al.'s fit), influence falls "
            f"with rank {quality} like a power law (mean R\u00b2 = {num(r2)}); slopes by kind: {kinds}. A "
            "steeper (more negative) slope means influence is concentrated in fewer documents."
        )
    mle = [
        f"{r['kind']} {num(r['mean_slope'])} {interval(r['ci_low'], r['ci_high'])}"
        for r in c.power_law_kinds.filter(pl.col("fit") == "mle").to_dicts()
        if r["kind"] != POOLED
    ]
    if mle:
        out.append(
            "Least squares on log-log axes is biased toward the top ranks; by maximum likelihood (Clauset et al.: "
            "x_min chosen per query by the smallest Kolmogorov-Smirnov distance, its rank in power_law.parquet) the "
            "mean slopes are: " + "; ".join(mle) + "."
        )
    from pretrace.report.sections import adjusted_p  # the package corrects every test of the page

    for t in c.power_law_test.filter((pl.col("fit") == "paper") & pl.col("p").is_finite()).to_dicts():
        p_holm = adjusted_p(a, SECTION.id, _comparison(t))
        verdict = "differ" if p_holm < 0.05 else "do not differ significantly"
        which = (
            ""
            if t["queries"] == ALL_QUERIES
            else f" on the queries the model answers correctly "
            f"({t['factual_queries']} factual, {t['reasoning_queries']} reasoning)"
        )
        out.append(
            f"Factual and reasoning slopes{which} {verdict} (Welch's t-test, as Ruis et al.: mean "
            f"{num(t['factual_mean'])} vs {num(t['reasoning_mean'])}, t = {num(t['t'])}, p = {num(t['p'], 3)}, "
            f"Holm-adjusted across the report's tests {num(p_holm, 3)}; planted facts are not among the factual)."
        )
    worst = float(c.concentration["share_error"].max() or 0.0) if c.concentration.height else 0.0
    bound = "below 0.001%" if worst < 1e-5 else pct(worst, 3)
    out.append(
        f"Shares beyond rank {a.stats.top_values.shape[1]} come from a log-binned histogram; the largest error "
        f"bound in this report is {bound} (absolute share)."
    )
    return out


def shares_plot(a: Analysis) -> bytes:
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
        x, y = conc.share_curve(a.stats, q)
        ax.plot(x, y, color=colors[kind], lw=0.6, alpha=0.35)
        curves.setdefault(kind, []).append(y)
    if x is None:
        empty(ax, "no positive influence")
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


def power_law_plot(a: Analysis) -> bytes:
    """Score against rank on log-log axes for the top ranks, with each kind's mean fitted line."""
    c = a.result(compute)
    fig = Figure(figsize=(10, 4.5))
    ax = fig.add_subplot(1, 2, 1)
    colors = kind_colors(a.kind_order)
    kinds = a.queries["kind"].to_list()
    fits = c.power_law.filter(pl.col("fit") == "paper").to_dicts()  # one per query, in report order
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
        empty(ax, "no positive scores")
    ax2 = fig.add_subplot(1, 2, 2)
    df = c.power_law_kinds.filter((pl.col("kind") != POOLED) & (pl.col("fit") == "paper"))
    paper = c.power_law.filter(pl.col("fit") == "paper")
    rng = np.random.default_rng(1)
    if paper["slope"].is_finite().any():
        for j, kind in enumerate(df["kind"].to_list()):
            s = paper.filter(pl.col("kind") == kind)["slope"].to_numpy()
            s = s[np.isfinite(s)]
            ax2.scatter(j + rng.uniform(-0.15, 0.15, s.size), s, s=14, alpha=0.7, color=colors[kind])
            row = df.row(j, named=True)
            if math.isfinite(row["mean_slope"]) and math.isfinite(row["ci_low"] or math.nan):
                ax2.errorbar(
                    [j + 0.3],
                    [row["mean_slope"]],
                    yerr=error_bars(row["mean_slope"], row["ci_low"], row["ci_high"]),
                    fmt="D",
                    color="k",
                    ms=4,
                    capsize=3,
                )
        ax2.set_xticks(range(df.height), df["kind"].to_list(), rotation=30, ha="right")
        ax2.set_ylabel("slope of log score vs log rank")
        ax2.set_title("Power-law slope per query")
    else:
        empty(ax2, "no fits")
    return png(fig)


def body(a: Analysis, figs: dict[str, bytes]) -> str:
    c = a.result(compute)
    df = with_ci(c.concentration_kinds, "mean_share", "ci_low", "ci_high", "cell", lambda x: pct(x, 1))
    wide = df.with_columns(pl.col("fraction").map_elements(lambda f: f"top {100 * f:g}%", return_dtype=pl.String))
    wide = wide.pivot(on="fraction", index="kind", values="cell", maintain_order=True)
    fits = with_ci(c.power_law_kinds, "mean_slope", "ci_low", "ci_high", "slope")
    return (
        figure(
            "concentration",
            figs["concentration"],
            "Share of a query's total positive influence held by its "
            "top documents (thin: queries; thick: mean per kind; grey lines: the fractions tabulated).",
        )
        + wide_table(wide)
        + figure(
            "power_law",
            figs["power_law"],
            f"Influence against rank on log-log axes over the top "
            f"{conc.PAPER_RANKS} ranks, with least-squares power-law fits (Ruis et al.'s definition; least squares "
            "on log-log is biased toward the top ranks, so the table also gives the maximum-likelihood slope).",
        )
        + table(
            fits,
            {
                "fit": "fit",
                "kind": "kind",
                "queries": "queries",
                "slope": "mean slope [interval]",
                "mean_r2": "mean R²",
            },
            text=("fit", "kind"),
        )
        + table(
            c.power_law_test,
            {
                "definition": "fit",
                "queries": "queries",
                "factual_queries": "factual queries",
                "reasoning_queries": "reasoning queries",
                "factual_mean": "factual mean slope",
                "reasoning_mean": "reasoning mean slope",
                "t": "Welch t",
                "dof": "d.o.f.",
                "p": "p (two-sided)",
            },
            text=("definition", "queries"),
        )
    )


def _comparison(t: dict) -> str:
    return f"factual vs reasoning slopes ({t['fit']} fit, {t['queries']} queries)"


def tests(a: Analysis) -> list[dict]:
    """The slope tests, by fit and subset of queries."""
    return [
        {
            "test": "Welch's t-test",
            "comparison": _comparison(t),
            "queries": t["factual_queries"] + t["reasoning_queries"],
            "p": t["p"],
        }
        for t in a.result(compute).power_law_test.to_dicts()
    ]


def headline(a: Analysis) -> dict[str, pl.DataFrame]:
    c = a.result(compute)
    return {
        "concentration": c.concentration_kinds.filter(pl.col("kind") != POOLED).select(
            ["kind", "fraction", "documents", "mean_share", "ci_low", "ci_high"]
        ),
        "power_law": c.power_law_kinds.filter(pl.col("fit") == "paper").select(
            ["kind", "queries", "mean_slope", "ci_low", "ci_high", "mean_r2"]
        ),
    }


SECTION = Section(
    "concentration",
    "How concentrated is influence?",
    body,
    reading,
    figures={"concentration": shares_plot, "power_law": power_law_plot},
    compute=compute,
    headline=headline,
    tests=tests,
)
