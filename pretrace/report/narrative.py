"""Plain-language readings of each section, written from the numbers of an :class:`Analysis`.

A difference is called a difference only when its interval excludes no-difference (zero for a
difference, one for a ratio); otherwise the text says the data do not resolve it.
"""

from __future__ import annotations

import math

import polars as pl

from .analysis import POOLED, Analysis
from .correlation import FACTUAL, REASONING

PAPER = ("Ruis et al. (2024) found that reasoning queries of the same kind share influential documents "
         "more than factual queries do")


def num(x: float | None, digits: int = 2) -> str:
    """A number for prose and tables: ``digits`` decimals, thousands separators above 1000,
    scientific notation for very small or very large magnitudes."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    if x != 0 and abs(x) < 10**-digits:
        return f"{x:.1e}"
    if abs(x) >= 10**7:
        return f"{x:.3g}"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def corr(x: float | None) -> str:
    """A correlation coefficient: two decimals."""
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.2f}"


def pct(x: float | None, digits: int = 1) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{100 * x:.{digits}f}%"


def interval(lo: float | None, hi: float | None, fmt=num, missing: str = "[no interval]") -> str:
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return missing
    return f"[{fmt(lo)}, {fmt(hi)}]"


def _row(df: pl.DataFrame, column: str, value) -> dict | None:
    rows = df.filter(pl.col(column) == value).to_dicts()
    return rows[0] if rows else None


def _reasoning_label(a: Analysis) -> str | None:
    kinds = a.magnitude_kinds.filter(pl.col("category") == REASONING)["kind"].to_list()
    if POOLED in kinds:
        return POOLED
    return kinds[0] if kinds else None


def _resolved(value, lo, hi, null: float = 0.0) -> int:
    """+1 / -1 when the interval lies above / below ``null``, 0 when it does not resolve the sign."""
    if not all(x is not None and math.isfinite(x) for x in (value, lo, hi)):
        return 0
    return 1 if lo > null else -1 if hi < null else 0


def correlation(a: Analysis) -> list[str]:
    g = {r["group"]: r for r in a.correlation_groups.to_dicts()}
    t = {r["comparison"]: r for r in a.correlation_tests.to_dicts()}
    out = []
    same, diff, fact = g.get("same reasoning kind"), g.get("different reasoning kinds"), g.get("within factual")
    describe = lambda r: f"mean r = {corr(r['mean_r'])} {interval(r['ci_low'], r['ci_high'], corr)}, {r['pairs']} pairs"  # noqa: E731
    if same and same["pairs"] and fact and fact["pairs"]:
        test = t["same reasoning kind - within factual"]
        d = f"difference {corr(test['difference'])} {interval(test['ci_low'], test['ci_high'], corr)}"
        sign = _resolved(test["difference"], test["ci_low"], test["ci_high"])
        if sign:
            out.append(f"Reasoning queries of the same kind correlate {'more' if sign > 0 else 'less'} "
                       f"({describe(same)}) than factual queries do with each other ({describe(fact)}); {d}.")
        else:
            out.append(f"Reasoning queries of the same kind ({describe(same)}) and factual queries ({describe(fact)}) "
                       f"cannot be told apart: the {d} includes zero, so these queries do not resolve it.")
    elif same and same["pairs"]:
        out.append(f"Reasoning queries of the same kind correlate with {describe(same)}; there are too few factual "
                   "queries to compare against.")
    else:
        out.append("There are too few reasoning queries of one kind to measure how they correlate.")
    if same and diff and same["pairs"] and diff["pairs"]:
        test = t["same reasoning kind - different reasoning kinds"]
        sign = _resolved(test["difference"], test["ci_low"], test["ci_high"])
        p = test["p_value"]
        p_text = f"; label-permutation p = {p:.2g}" if p is not None and math.isfinite(p) else ""
        verdict = {1: "clearly lower than", -1: "clearly higher than", 0: "not clearly different from"}[sign]
        out.append(f"Across different reasoning kinds the mean correlation is {corr(diff['mean_r'])} "
                   f"{interval(diff['ci_low'], diff['ci_high'], corr)}, {verdict} within a kind "
                   f"(difference {corr(test['difference'])} {interval(test['ci_low'], test['ci_high'], corr)}{p_text}).")
    ctl = g.get("control vs others")
    if ctl and ctl["pairs"]:
        out.append(f"Control queries correlate with the others at {corr(ctl['mean_r'])} "
                   f"{interval(ctl['ci_low'], ctl['ci_high'], corr)}, a baseline for unrelated queries.")
    out.append(f"For comparison: {PAPER}. Intervals are {int(100 * a.config.level)}% bootstrap intervals over "
               "queries, resampled within each kind.")
    return out


def magnitude(a: Analysis) -> list[str]:
    out = []
    cmp = _row(a.magnitude_comparison, "measure", "positive_per_nat")
    fact_rows = a.magnitude_kinds.filter(pl.col("category") == FACTUAL).to_dicts()
    label = _reasoning_label(a)
    reas = _row(a.magnitude_kinds, "kind", label) if label else None
    if cmp and fact_rows and reas and math.isfinite(cmp["reasoning_over_factual"]):
        ratio, lo, hi = cmp["reasoning_over_factual"], cmp["ci_low"], cmp["ci_high"]
        if math.isfinite(lo) and lo > 1:
            verdict = "more"
        elif math.isfinite(hi) and hi < 1:
            verdict = "less"
        else:
            verdict = "about as much (the interval includes equality)"
        out.append(f"Per nat of completion information, reasoning queries receive {verdict} total positive influence "
                   f"than factual queries: mean {num(cmp['reasoning_mean'], 3)} vs {num(cmp['factual_mean'], 3)}, "
                   f"ratio {num(ratio)} {interval(lo, hi)}.")
    else:
        out.append("There are not both factual and reasoning queries with a known log-probability to compare.")
    abs_cmp = _row(a.magnitude_comparison, "measure", "absolute_per_nat")
    if abs_cmp and math.isfinite(abs_cmp["reasoning_over_factual"]):
        out.append(f"Counting negative influence too (absolute influence per nat) the ratio is "
                   f"{num(abs_cmp['reasoning_over_factual'])} {interval(abs_cmp['ci_low'], abs_cmp['ci_high'])}.")
    out.append("Ruis et al. (2024) found that, per nat, reasoning relies less on individual documents than factual "
               "recall does: a ratio below 1.")
    return out


def concentration(a: Analysis) -> list[str]:
    out = []
    fractions = sorted(a.config.fractions)
    f = 0.01 if 0.01 in fractions else fractions[len(fractions) // 2]
    parts = []
    for r in a.concentration_kinds.filter(pl.col("fraction") == f).to_dicts():
        if r["kind"] == POOLED:
            continue
        parts.append(f"{r['kind']} {pct(r['mean_share'])} {interval(r['ci_low'], r['ci_high'], pct)}")
    if parts:
        out.append(f"The top {pct(f, 2 if f < 0.01 else 0)} of documents hold on average this share of a query's total "
                   "positive influence: " + "; ".join(parts) + ".")
    fit = a.power_law.filter(pl.col("slope").is_finite())
    if fit.height:
        r2 = float(fit["r2"].mean())
        quality = "closely" if r2 >= 0.95 else "reasonably" if r2 >= 0.85 else "only loosely"
        kinds = "; ".join(f"{r['kind']} {num(r['mean_slope'])} {interval(r['ci_low'], r['ci_high'])}"
                          for r in a.power_law_kinds.to_dicts() if r["kind"] != POOLED)
        out.append(f"Over the top of each ranking (up to {int(fit['ranks'].max())} ranks), influence falls with rank {quality} like a power law "
                   f"(mean R\u00b2 = {num(r2)}); slopes by kind: {kinds}. A steeper (more negative) slope means "
                   "influence is concentrated in fewer documents.")
    worst = float(a.concentration["share_error"].max() or 0.0) if a.concentration.height else 0.0
    bound = "below 0.001%" if worst < 1e-5 else pct(worst, 3)
    out.append(f"Shares beyond rank {a.stats.top_values.shape[1]} come from a log-binned histogram; the largest error "
               f"bound in this report is {bound} (absolute share).")
    return out


def answers(a: Analysis) -> list[str]:
    out = []
    k = a.config.k
    rows = {r["kind"]: r for r in a.answers_kinds.to_dicts()}
    fact = [r for r in rows.values() if r["category"] == FACTUAL and r["queries_with_answer"]]
    label = _reasoning_label(a)
    reas = rows.get(label) if label else None
    if fact:
        r = fact[0]
        out.append(f"The answer appears in the top {k} documents of {r['answer_in_top']} of {r['queries_with_answer']} "
                   f"{r['kind']} queries ({pct(r['share_answer_in_top'], 0)} "
                   f"{interval(r['ci_low'], r['ci_high'], lambda x: pct(x, 0))}), in "
                   f"{num(r['mean_docs_with_answer'], 1)} documents per query on average against "
                   f"{num(r['mean_expected_by_chance'], 2)} expected by chance.")
    if reas and reas["queries_with_answer"]:
        out.append(f"For {reas['kind']} queries the final answer appears in the top {k} of {reas['answer_in_top']} of "
                   f"{reas['queries_with_answer']} ({pct(reas['share_answer_in_top'], 0)} "
                   f"{interval(reas['ci_low'], reas['ci_high'], lambda x: pct(x, 0))}), in "
                   f"{num(reas['mean_docs_with_answer'], 1)} documents per query against "
                   f"{num(reas['mean_expected_by_chance'], 2)} by chance"
                   + (f"; {reas['intermediates_in_top']} of {reas['intermediates']} intermediate results appear."
                      if reas["intermediates"] else "."))
    if fact and reas and reas["queries_with_answer"]:
        f, r = fact[0], reas
        if r["ci_high"] < f["ci_low"]:
            out.append("As in Ruis et al. (2024), answers to factual questions are found in influential documents "
                       "far more often than answers to reasoning questions.")
        elif f["ci_high"] < r["ci_low"]:
            out.append("Unlike Ruis et al. (2024), answers to reasoning questions are found more often than answers "
                       "to factual questions.")
        else:
            out.append("The intervals overlap, so this report cannot tell whether factual answers appear more often "
                       "than reasoning answers (Ruis et al. 2024 found they do).")
    if not out:
        out.append("No query has an answer to search for.")
    out.append("Matching is whole-token: \u201c12\u201d inside \u201c312\u201d, \u201c12.5\u201d or \u201c-12\u201d "
               "does not count as the answer 12.")
    return out


def sources(a: Analysis) -> list[str]:
    if len(a.corpus_sources) < 2:
        names = ", ".join(a.corpus_sources) or "none"
        return [f"All documents come from one source ({names}), so there is no over- or under-representation to measure."]
    out = []
    df = a.sources.filter((pl.col("side") == "top") & (pl.col("kind") != POOLED) & pl.col("ratio").is_finite())
    for kind in a.kind_order:
        sub = df.filter((pl.col("kind") == kind) & (pl.col("count") > 0)).sort("ratio", descending=True)
        if sub.height == 0:
            continue
        best = sub.row(0, named=True)
        text = (f"In the top {a.config.k} of {kind} queries, {best['source']} is the most over-represented source: "
                f"{pct(best['share'])} of top documents against {pct(best['corpus_share'])} of the corpus "
                f"(\u00d7{num(best['ratio'])})")
        under = df.filter((pl.col("kind") == kind) & (pl.col("corpus_share") >= 0.05)).sort("ratio")
        if under.height and under.row(0, named=True)["source"] != best["source"]:
            worst = under.row(0, named=True)
            text += f"; {worst['source']} is the most under-represented (\u00d7{num(worst['ratio'])})"
        out.append(text + ".")
    if not out:
        out.append("No top documents to attribute to sources.")
    out.append("A ratio above 1 means the source is more common among influential documents than in the corpus.")
    return out


def top_documents(a: Analysis) -> list[str]:
    n = a.queries.height
    return [f"The {min(a.config.html_rows, a.config.k)} most positively and most negatively influential documents of each of the {n} "
            f"queries, out of {a.n_documents:,} documents; all {a.config.k} per side are in top_documents.parquet. "
            "A positive score means the document raised the probability of the completion."]


def readings(a: Analysis) -> dict[str, list[str]]:
    return {"correlation": correlation(a), "magnitude": magnitude(a), "concentration": concentration(a),
            "answers": answers(a), "sources": sources(a), "top-documents": top_documents(a)}
