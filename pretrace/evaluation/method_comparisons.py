"""Influence against each baseline on the ground truths, query by query.

The attribution check measures every method on the same queries: the tail-patch gain (every
query) and the reciprocal rank of the first document stating a query's evidence (queries that name
their evidence, per kind, also by how many documents state it). Means alone cannot say whether
influence beats a baseline; these rows pair the two methods' values per query
(`pretrace.analyses.paired`).
"""

from __future__ import annotations

import polars as pl

from pretrace.analyses.paired import paired_test

REFERENCE = "influence"
MEASURES = {"tail_patch_gain": "gain", "reciprocal_rank": "reciprocal_rank"}

SCHEMA = {
    "measure": pl.String,
    "subset": pl.String,
    "kind": pl.String,  # the queries' kind (reciprocal rank: kinds never pooled); null: every query
    "evidence_documents": pl.Int64,  # documents stating the evidence; 0: all of the kind; null: tail-patch
    "baseline": pl.String,
    "queries": pl.Int64,
    "influence_mean": pl.Float64,
    "baseline_mean": pl.Float64,
    "mean_difference": pl.Float64,
    "permutation_p": pl.Float64,
    "wilcoxon_p": pl.Float64,
}


def method_comparisons(gains: pl.DataFrame | None, retrieval: pl.DataFrame | None, seed: int = 0) -> pl.DataFrame:
    """One row per measure, subset of queries and baseline: influence's and the baseline's mean on
    the same queries, their mean difference, and the paired tests' p-values (uncorrected)."""
    rows: list[dict] = []
    if gains is not None and not gains.is_empty():
        rows += _compare(gains, "tail_patch_gain", "all queries", seed, {"kind": None, "evidence_documents": None})
    if retrieval is not None and not retrieval.is_empty():
        kinds = retrieval["kind"] if "kind" in retrieval.columns else pl.Series([None] * retrieval.height)
        for kind in dict.fromkeys(kinds.to_list()):
            mine = retrieval.filter(kinds == kind) if kind is not None else retrieval
            name = f"{kind} queries" if kind is not None else "queries with evidence"
            rows += _compare(mine, "reciprocal_rank", name, seed, {"kind": kind, "evidence_documents": 0})
            for stated in sorted(set(mine["evidence_documents"].to_list())):
                subset = mine.filter(pl.col("evidence_documents") == stated)
                labels = {"kind": kind, "evidence_documents": stated}
                rows += _compare(subset, "reciprocal_rank", f"{name} stated {stated} times", seed, labels)
    return pl.DataFrame(rows, schema=SCHEMA)


def _compare(frame: pl.DataFrame, measure: str, subset: str, seed: int, labels: dict) -> list[dict]:
    column = MEASURES[measure]
    wide = frame.pivot(on="method", index="query_id", values=column, aggregate_function="first")
    if REFERENCE not in wide.columns:
        return []
    mine = wide[REFERENCE].to_numpy().astype(float)
    rows = []
    for baseline in (c for c in wide.columns if c not in ("query_id", REFERENCE)):
        other = wide[baseline].to_numpy().astype(float)
        test = paired_test(mine, other, seed=seed)
        both = ~(wide[REFERENCE].is_null() | wide[baseline].is_null()).to_numpy()
        rows.append(
            {
                "measure": measure,
                "subset": subset,
                **labels,
                "baseline": baseline,
                "queries": test.n,
                "influence_mean": float(mine[both].mean()) if both.any() else float("nan"),
                "baseline_mean": float(other[both].mean()) if both.any() else float("nan"),
                "mean_difference": test.mean_difference,
                "permutation_p": test.permutation_p,
                "wilcoxon_p": test.wilcoxon_p,
            }
        )
    return rows
