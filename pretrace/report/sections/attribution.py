"""Attribution check: do the documents influence ranks first cause the answer? (the
`attribution_eval` artefact: tail-patch gains, and where planted or known evidence ranks)."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from pretrace.analyses.analysis import Analysis
from pretrace.evaluation.method_comparisons import method_comparisons
from pretrace.report.formatting import interval, num, pct
from pretrace.report.html import table, with_ci
from pretrace.report.section import Section

BASELINES = {
    "random": "k random documents",
    "bm25": "BM25's top k",
    "cosine": "gradient cosine's top k",
    "identity": "the raw gradient dot product's top k",
}
VARIANTS = {
    "influence_unit": "unit-normalised influence",
    "influence_relatif": "RelatIF",
}
"""Gradient-normalised influence (`pretrace.evaluation.normalised_influence`): influence divided by
the gradients' norms in the stored space, and by the root of the document's self-influence."""


@dataclass
class Attribution:
    tail_patch: pl.DataFrame  # method, kind, queries, mean_gain, low, high, beats_random
    evidence_retrieval: pl.DataFrame  # method, evidence_documents (0 = all), queries, recall_at_k, mrr
    method_comparisons: pl.DataFrame  # influence against each baseline, paired per query (uncorrected p)


def compute(a: Analysis) -> Attribution:
    check = a.attribution or {}
    empty = pl.DataFrame()
    paired = method_comparisons(check.get("gains"), check.get("retrieval"), seed=a.config.seed)
    return Attribution(check.get("summary", empty), check.get("retrieval_summary", empty), paired)


def _comparison(r: dict) -> str:
    return f"influence vs {r['baseline']}: {r['measure'].replace('_', ' ')}, {r['subset']}"


def tests(a: Analysis) -> list[dict]:
    """Influence against each baseline on each ground truth: the paired sign-flip permutation test."""
    return [
        {
            "test": "paired sign-flip permutation test",
            "comparison": _comparison(r),
            "queries": r["queries"],
            "p": r["permutation_p"],
        }
        for r in a.result(compute).method_comparisons.to_dicts()
    ]


def _paired_reading(a: Analysis) -> list[str]:
    """Where influence's mean differs from a baseline's on the same queries, after correction."""
    from pretrace.report.sections import adjusted_p  # the package corrects every test of the page

    lines = []
    rows = a.result(compute).method_comparisons
    for measure, subset in dict.fromkeys(zip(rows["measure"].to_list(), rows["subset"].to_list())):
        mine = rows.filter((pl.col("measure") == measure) & (pl.col("subset") == subset)).to_dicts()
        parts = []
        for r in mine:
            p = adjusted_p(a, SECTION.id, _comparison(r))
            side = "above" if r["mean_difference"] > 0 else "below"
            verdict = side if p < 0.05 else f"not distinguishable ({side} on average)"
            parts.append(f"{r['baseline']} {verdict}: difference {num(r['mean_difference'], 3)}, Holm p = {num(p, 3)}")
        if parts:
            lines.append(
                f"Paired over the same {mine[0]['queries']} queries ({measure.replace('_', ' ')}, {subset}), influence "
                f"against each baseline: " + "; ".join(parts) + "."
            )
    return lines


def reading(a: Analysis) -> list[str]:
    result = a.result(compute)
    if result.tail_patch.is_empty():
        return _paired_reading(a) or ["This report was built without the attribution check."]
    overall = {r["method"]: r for r in result.tail_patch.filter(pl.col("kind") == "all").iter_rows(named=True)}
    mine = overall.get("influence")
    if mine is None:
        return _paired_reading(a)

    def said(row: dict) -> str:
        return f"{num(row['mean_gain'], 3)} nats {interval(row['low'], row['high'], lambda x: num(x, 3), missing='')}".strip()

    others = "; ".join(f"{label} {said(overall[m])}" for m, label in BASELINES.items() if m in overall)
    above = [label for m, label in BASELINES.items() if m in overall and mine["mean_gain"] > overall[m]["mean_gain"]]
    below = [label for m, label in BASELINES.items() if m in overall and mine["mean_gain"] <= overall[m]["mean_gain"]]
    verdict = (f"Influence's mean gain is above that of {', '.join(above)}" if above else "") + (
        ("; " if above else "Influence's mean gain is ") + f"not above that of {', '.join(below)}" if below else ""
    )
    lines = [
        f"One small training step on each query's top documents by influence changed log p(completion) by "
        f"{said(mine)} on average ({others}). {verdict} (means; see the intervals). It beat k random documents on "
        f"{pct(mine['beats_random'], 0)} of the queries. A larger gain means the documents, trained on, make the "
        "model more likely to give its answer."
    ]
    retrieval = result.evidence_retrieval
    for kind in dict.fromkeys(retrieval["kind"].to_list()) if not retrieval.is_empty() else []:
        overall_rows = retrieval.filter((pl.col("kind") == kind) & (pl.col("evidence_documents") == 0))
        mrr = {r["method"]: r for r in overall_rows.iter_rows(named=True)}
        ranked = ", ".join(f"{m} {num(r['mrr'], 2)}" for m, r in mrr.items())
        n = next(iter(mrr.values()))["queries"]
        lines.append(
            f"For the {n} {kind} queries whose evidence is known (documents stating it), the mean reciprocal "
            f"rank of the first such document in each method's top k is: {ranked} (1 = always first)."
        )
    return lines + _variants_reading(result) + _paired_reading(a)


def _variants_reading(result: Attribution) -> list[str]:
    """Gradient-normalised influence beside plain influence: the mean tail-patch gain, and the MRR
    on the facts the corpus states most often (where plain influence ranks them worst)."""
    overall = {r["method"]: r for r in result.tail_patch.filter(pl.col("kind") == "all").iter_rows(named=True)}
    present = [m for m in VARIANTS if m in overall]
    if not present:
        return []
    gains = "; ".join(f"{VARIANTS[m]} {num(overall[m]['mean_gain'], 3)} nats" for m in present)
    line = (
        "Gradient-normalised influence divides each score by the document's gradient norm (unit-normalised, "
        "in the space of the gradient cosine) or by the root of its self-influence g\u1d40H\u207b\u00b9g "
        f"(RelatIF): mean tail-patch gain {gains}, against influence's {num(overall['influence']['mean_gain'], 3)}"
    )
    retrieval = result.evidence_retrieval
    parts = []
    for kind in dict.fromkeys(retrieval["kind"].to_list()) if not retrieval.is_empty() else []:
        mine = retrieval.filter(pl.col("kind") == kind)
        most = int(mine["evidence_documents"].max())
        mrr = {r["method"]: r["mrr"] for r in mine.filter(pl.col("evidence_documents") == most).iter_rows(named=True)}
        parts.append(
            f"{kind} queries whose evidence {most} documents state: "
            + ", ".join(f"{VARIANTS.get(m, m)} {num(mrr[m], 2)}" for m in ["influence", *present] if m in mrr)
        )
    if parts:
        line += "; MRR on " + "; on ".join(parts)
    return [line + " (paired tests against influence below)."]


def body(a: Analysis, figs: dict[str, bytes]) -> str:
    result = a.result(compute)
    return _tail_patch_html(result) + _variants_html(result) + _paired_html(result)


def _variants_html(result: Attribution) -> str:
    if not set(VARIANTS) & set(result.tail_patch["method"].to_list() if not result.tail_patch.is_empty() else []):
        return ""
    return (
        "<p>influence_unit: influence divided by the query's and the document's gradient norms, both in the space "
        "of the stored document gradients (where the gradient cosine is computed). influence_relatif (RelatIF, "
        "Barshan et al. 2020): influence divided by the square root of the document's self-influence "
        "g\u1d40H\u207b\u00b9g, from the stored gradient: exact for an unprojected store, exact on the kept block "
        "for a principal projection (the dropped low-curvature rest is missing, as from the scores), estimated by "
        "the whitened norm for a whitened one, and not measured for a raw projection.</p>"
    )


def _tail_patch_html(result: Attribution) -> str:
    if result.tail_patch.is_empty():
        return ""
    gains = with_ci(result.tail_patch, "mean_gain", "low", "high", "gain")
    html = table(
        gains,
        {
            "method": "method",
            "kind": "queries",
            "queries": "n",
            "gain": "mean gain (nats) [95% CI]",
            "beats_random": "beats random",
        },
        formats={"beats_random": lambda v: pct(v, 0)},
        text=("method", "kind"),
    )
    if not result.evidence_retrieval.is_empty():
        retrieval = result.evidence_retrieval.with_columns(
            pl.when(pl.col("evidence_documents") == 0)
            .then(pl.lit("all"))
            .otherwise(pl.col("evidence_documents").cast(pl.String) + " documents")
            .alias("stated_by")
        )
        html += "<h3>Where the documents stating a query's evidence rank</h3>" + table(
            retrieval,
            {
                "method": "method",
                "kind": "queries",
                "stated_by": "evidence stated by",
                "queries": "n",
                "recall_at_k": "recall@k",
                "mrr": "MRR",
            },
            text=("method", "kind", "stated_by"),
        )
    return html


def _paired_html(result: Attribution) -> str:
    paired = result.method_comparisons
    if paired.is_empty():
        return ""
    return (
        "<h3>Influence against each baseline and each normalised variant, paired over the same queries</h3>"
        + table(
            paired,
            {
                "measure": "measure",
                "subset": "queries",
                "baseline": "baseline",
                "queries": "n",
                "influence_mean": "influence mean",
                "baseline_mean": "baseline mean",
                "mean_difference": "difference",
                "permutation_p": "sign-flip p",
                "wilcoxon_p": "Wilcoxon p",
            },
            text=("measure", "subset", "baseline"),
        )
        + "<p>p-values here are uncorrected; the report's tests table gives them adjusted (Holm).</p>"
    )


SECTION = Section("attribution", "Attribution check (tail-patch)", body, reading, compute=compute, tests=tests)
