"""Influence against each baseline, paired per query, on hand-built ground-truth tables, and the
lines bench/validation.py prints from them."""

import numpy as np
import polars as pl
import pytest

from bench.validation import detection_lines, paired_lines
from pretrace.analyses.paired import sign_flip_p
from pretrace.evaluation.method_comparisons import method_comparisons

GAINS = pl.DataFrame(
    {
        "query_id": [q for q in "abcd" for _ in range(3)],
        "method": ["influence", "cosine", "bm25"] * 4,
        "gain": [0.3, 0.1, 0.0, 0.2, 0.3, 0.1, 0.5, 0.2, 0.4, 0.1, 0.0, 0.2],
    }
)
RETRIEVAL = pl.DataFrame(
    {
        "query_id": ["p1", "p1", "p2", "p2", "p3", "p3"],
        "kind": ["planted"] * 6,
        "method": ["influence", "cosine"] * 3,
        "evidence_documents": [1, 1, 10, 10, 10, 10],
        "reciprocal_rank": [1.0, 0.5, 0.0, 1.0, 0.25, 1.0],
    }
)


def test_each_baseline_is_paired_with_influence_on_the_same_queries():
    rows = {(r["measure"], r["subset"], r["baseline"]): r for r in method_comparisons(GAINS, RETRIEVAL).to_dicts()}
    cosine = rows[("tail_patch_gain", "all queries", "cosine")]
    d = np.array([0.3 - 0.1, 0.2 - 0.3, 0.5 - 0.2, 0.1 - 0.0])
    assert cosine["queries"] == 4 and cosine["mean_difference"] == pytest.approx(d.mean())
    assert cosine["permutation_p"] == pytest.approx(sign_flip_p(d))
    assert (cosine["influence_mean"], cosine["baseline_mean"]) == pytest.approx((0.275, 0.15))
    stated10 = rows[("reciprocal_rank", "planted queries stated 10 times", "cosine")]
    assert stated10["queries"] == 2 and stated10["mean_difference"] == pytest.approx(((0 - 1) + (0.25 - 1)) / 2)
    assert (stated10["kind"], stated10["evidence_documents"]) == ("planted", 10)
    assert set(rows) == {
        ("tail_patch_gain", "all queries", "cosine"),
        ("tail_patch_gain", "all queries", "bm25"),
        ("reciprocal_rank", "planted queries", "cosine"),
        ("reciprocal_rank", "planted queries stated 1 times", "cosine"),
        ("reciprocal_rank", "planted queries stated 10 times", "cosine"),
    }


def test_kinds_with_evidence_are_compared_apart_and_variants_against_influence():
    reasoning = RETRIEVAL.with_columns(
        kind=pl.lit("planted_reasoning"),
        query_id=pl.col("query_id") + "r",
        reciprocal_rank=1 - pl.col("reciprocal_rank"),
    )
    unit = RETRIEVAL.filter(pl.col("method") == "cosine").with_columns(method=pl.lit("influence_unit"))
    rows = method_comparisons(None, pl.concat([RETRIEVAL, unit, reasoning], how="diagonal"))
    planted = rows.filter((pl.col("kind") == "planted") & (pl.col("evidence_documents") == 0))
    assert set(planted["baseline"]) == {"cosine", "influence_unit"} and set(planted["queries"]) == {3}
    other = rows.filter((pl.col("kind") == "planted_reasoning") & (pl.col("evidence_documents") == 0)).row(
        0, named=True
    )
    assert other["queries"] == 3 and other["influence_mean"] == pytest.approx((0 + 1 + 0.75) / 3)


def test_without_influence_or_data_there_is_nothing_to_compare():
    assert method_comparisons(None, None).is_empty()
    assert method_comparisons(GAINS.filter(pl.col("method") != "influence"), None).is_empty()


def test_validation_prints_one_line_per_paired_comparison():
    lines = paired_lines(GAINS, RETRIEVAL)
    assert len(lines) == 5
    assert lines[0].startswith("paired_tailpatch_influence_vs_cosine: difference 0.125 ")
    assert "sign-flip p" in lines[0] and "Wilcoxon p" in lines[0] and "Holm p" in lines[0]
    assert lines[-1].startswith("paired_planted_rr_stated10x_influence_vs_cosine: ")


def test_validation_prints_the_detection_rate_overall_then_by_frequency():
    summary = pl.DataFrame(
        {
            "frequency": [0, 1, 10],
            "queries": [6, 3, 3],
            "retrieved": [4, 1, 3],
            "detected": [3, 1, 2],
            "detection_rate": [0.75, 1.0, 2 / 3],
            "ci_low": [0.3, 0.2, 0.2],
            "ci_high": [0.95, 1.0, 0.9],
            "answer_detected": [4, 1, 3],
            "steps": [8, 2, 6],
            "steps_detected": [7, 2, 5],
        }
    )
    lines = detection_lines(summary)
    assert lines[0].startswith("answer_search_detection_rate: 0.750 [0.300, 0.950] (3 of 4 retrieved queries")
    assert lines[2].startswith("answer_search_detection_rate_stated10x: 0.667 ")
    assert "6 control queries" in lines[0]
