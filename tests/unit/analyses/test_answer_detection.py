"""The answer search's positive control on a hand-built score matrix: retrieval is where the
evidence ranks in the top k, detection what the search's matching rules find in it."""

import math

import polars as pl
import pyarrow as pa
import pytest

from pretrace.analyses.answer_detection import answer_detection, detection_summary
from pretrace.analyses.top_documents import query_targets, top_documents

DOCS = {
    "p1": "Step 1: 12 + 5 = 17. Step 2: 7 * 8 = 56. So the total is 1,234.",  # grouped thousands
    "p2": "Step 1: 2 * 3 = 6. The answer is 42.",
    "p3": "def f():\n    x = 33\n    return 3 * x  # 99.0",  # 99 only as the head of a decimal
    "n1": "There were 42 apples in the basket.",
    "n2": "Nothing to see here.",
    "f1": "Ada Lovelace lives in Paris.",
}
QUERIES = {
    "r1": ("1234", ["17", "56"]),
    "r2": ("42", ["6"]),
    "r3": ("99", ["33"]),
    "fact": ("Paris", []),  # no step results: not a control of the reasoning search
}
SCORES = {  # per query, per document in DOCS order
    "r1": [5, 0, 0, 1, 4, 0],
    "r2": [0, 3, 0, 5, 4, 0],  # its evidence third: out of the top 2
    "r3": [0, 0, 4, 0, 5, 1],
    "fact": [0, 0, 0, 0, 0, 9],
}
EVIDENCE = pl.DataFrame(
    {
        "query_id": ["r1", "r2", "r3", "fact"],
        "frequency": [1, 3, 1, 1],
        "shard": ["s"] * 4,
        "doc_id": ["p1", "p2", "p3", "f1"],
    }
)


def detect(evidence: pl.DataFrame, k: int) -> pl.DataFrame:
    """The control's rows from the top 3 lists of the hand-built scores, cut at ``k``."""
    ids = list(QUERIES)
    queries = pa.table(
        {"id": ids, "answer": [a for a, _ in QUERIES.values()], "intermediates": [s for _, s in QUERIES.values()]}
    )
    targets = query_targets(ids, queries)
    scores = [[float(x) for x in SCORES[q]] for q in ids]
    top = top_documents(ids, list(DOCS), scores, 3, texts=list(DOCS.values()), targets=targets, shard="s")
    return answer_detection(pl.from_arrow(top), evidence, dict(zip(ids, targets)), k)


@pytest.fixture
def detection():
    return detect(EVIDENCE, k=2)


def test_retrieval_is_evidence_in_the_top_k_and_detection_what_the_rules_find_in_it(detection):
    rows = {r["query_id"]: r for r in detection.to_dicts()}
    assert set(rows) == {"r1", "r2", "r3"}  # the fact has no step results
    # r1: evidence first, answer written 1,234 and both steps found
    assert rows["r1"] == {
        "query_id": "r1",
        "frequency": 1,
        "steps": 2,
        "evidence_rank": 1,
        "retrieved": True,
        "answer_detected": True,
        "steps_detected": 2,
        "detected": True,
        "answer_in_top_k": True,
    }
    # r2: evidence ranked 3rd, outside k = 2: not retrieved, though 42 is in a top document by chance
    assert rows["r2"]["retrieved"] is False and rows["r2"]["evidence_rank"] is None
    assert rows["r2"]["detected"] is None and rows["r2"]["answer_in_top_k"] is True
    # r3: retrieved at rank 2, the step found, the answer (only "99.0") not: a miss of the search
    assert (rows["r3"]["evidence_rank"], rows["r3"]["answer_detected"], rows["r3"]["steps_detected"]) == (2, False, 1)
    assert rows["r3"]["detected"] is False


def test_the_rate_is_detected_over_retrieved_by_frequency(detection):
    summary = {r["frequency"]: r for r in detection_summary(detection).to_dicts()}
    assert (summary[0]["queries"], summary[0]["retrieved"], summary[0]["detected"]) == (3, 2, 1)
    assert summary[0]["detection_rate"] == 0.5 and summary[0]["ci_low"] < 0.5 < summary[0]["ci_high"]
    assert (summary[0]["answer_detected"], summary[0]["steps"], summary[0]["steps_detected"]) == (1, 3, 3)
    assert (summary[1]["retrieved"], summary[1]["detected"]) == (2, 1)
    assert summary[3]["queries"] == 1 and summary[3]["retrieved"] == 0 and math.isnan(summary[3]["detection_rate"])


def test_a_larger_cut_off_counts_the_evidence_ranked_third():
    rows = {r["query_id"]: r for r in detect(EVIDENCE, k=3).to_dicts()}
    assert (rows["r2"]["evidence_rank"], rows["r2"]["detected"]) == (3, True)
    # the same doc_id in another shard is another document: not the evidence
    assert not detect(EVIDENCE.with_columns(shard=pl.lit("t")), k=3)["retrieved"].any()


def test_the_report_reads_the_control_beside_the_answer_search():
    """Through the report: shards summarized from the same scores, the check's evidence table,
    the report's k = 2; the answers section's tables and reading carry the detection rate."""
    from pretrace.analyses.analysis import ReportConfig, analyze
    from pretrace.analyses.merge import merge_shards
    from pretrace.analyses.shard_statistics import summarize_shard
    from pretrace.report import sections

    ids = list(QUERIES)
    queries = pa.table(
        {
            "id": ids,
            "kind": ["planted_reasoning"] * 3 + ["planted"],
            "prompt": [""] * 4,
            "completion": [""] * 4,
            "answer": [a for a, _ in QUERIES.values()],
            "intermediates": [s for _, s in QUERIES.values()],
        }
    )
    docs = pa.table({"doc_id": list(DOCS), "source": ["x"] * len(DOCS), "text": list(DOCS.values())})
    scores = [[float(x) for x in SCORES[q]] for q in ids]
    shard = summarize_shard(ids, list(DOCS), scores, docs, queries, k=3, shard="s")
    stats, top = merge_shards([shard], 3)
    a = analyze(
        stats, top, queries, ReportConfig(k=2, bootstrap=50, permutations=20), {"evidence": EVIDENCE.to_arrow()}
    )
    result = a.result(sections.answers.compute)
    overall = result.answer_detection_summary.row(0, named=True)
    assert (overall["frequency"], overall["queries"], overall["retrieved"], overall["detected"]) == (0, 3, 2, 1)
    text = " ".join(sections.answers.reading(a))
    assert "Positive control: for 2 of 3 queries" in text and "for 1 of them (50%" in text
    assert "answer_detection_summary" in sections.tables(a)
