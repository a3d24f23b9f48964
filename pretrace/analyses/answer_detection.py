"""The answer search's positive control: when influence retrieves a document that states a
query's answer and step results, does the search detect it?

"The answer does not show up in the top documents" means something only if the search would see
it when it is there. Queries whose `evidence` is known (documents planted in the corpus that state
the answer and each step's result, in worked steps, prose or code) and that have step results
(`intermediates`) are its positive control. For each, at the report's cut-off k:

- retrieved: a document stating its evidence is among its top k by influence;
- detected (of the retrieved): the answer and every step result are found, by the search's
  matching rules (`pretrace.analyses.answers`), in the retrieved evidence documents. A match in
  another top document is counted apart (``answer_in_top_k``): a small number turns up in many
  documents by chance, which would detect retrieval that never happened.

The detection rate is detected / retrieved, by how often the corpus states the evidence. Queries
whose evidence is not retrieved say nothing of the search and are left out of the rate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import polars as pl

from pretrace.analyses.intervals import wilson

PER_QUERY_SCHEMA = {
    "query_id": pl.String,
    "frequency": pl.Int64,
    "steps": pl.Int64,
    "evidence_rank": pl.Int64,  # rank of the first evidence document in the top k; null: not retrieved
    "retrieved": pl.Boolean,
    "answer_detected": pl.Boolean,  # null when not retrieved
    "steps_detected": pl.Int64,
    "detected": pl.Boolean,  # answer and every step result, in the retrieved evidence documents
    "answer_in_top_k": pl.Boolean,  # the answer in any top-k document (what the search reports)
}


def answer_detection(
    top: pl.DataFrame, evidence: pl.DataFrame, targets: Mapping[str, list[str]], k: int
) -> pl.DataFrame:
    """One row per control query: its top-k (``top``: the merged top lists, TOP_SCHEMA, with the
    search's flags), the documents stating its evidence (``evidence``: query_id, frequency, shard,
    doc_id) and its normalized [answer, *step results] (``targets``, by query id)."""
    rows = []
    for (query_id,), stating in evidence.group_by(["query_id"], maintain_order=True):
        answer, *steps = targets.get(query_id) or [""]
        if not answer or not steps:
            continue
        keys = set(zip(stating["shard"].to_list(), stating["doc_id"].to_list()))
        mine = top.filter((pl.col("query_id") == query_id) & (pl.col("side") == "top") & (pl.col("rank") <= k))
        retrieved = [r for r in mine.sort("rank").iter_rows(named=True) if (r["shard"], r["doc_id"]) in keys]
        answer_found = any(bool(r["answer_found"]) for r in retrieved)
        steps_found = sum(any(_flag(r["intermediates_found"], i) for r in retrieved) for i in range(len(steps)))
        rows.append(
            {
                "query_id": query_id,
                "frequency": int(stating["frequency"][0]),
                "steps": len(steps),
                "evidence_rank": retrieved[0]["rank"] if retrieved else None,
                "retrieved": bool(retrieved),
                "answer_detected": answer_found if retrieved else None,
                "steps_detected": steps_found if retrieved else None,
                "detected": (answer_found and steps_found == len(steps)) if retrieved else None,
                "answer_in_top_k": bool(mine["answer_found"].fill_null(False).any()),
            }
        )
    return pl.DataFrame(rows, schema=PER_QUERY_SCHEMA)


def _flag(flags: list[bool] | None, i: int) -> bool:
    return bool(flags) and i < len(flags) and bool(flags[i])


SUMMARY_SCHEMA = {
    "frequency": pl.Int64,  # how often the corpus states the evidence; 0 = every control query
    "queries": pl.Int64,
    "retrieved": pl.Int64,
    "detected": pl.Int64,
    "detection_rate": pl.Float64,  # detected / retrieved
    "ci_low": pl.Float64,  # Wilson interval of the rate
    "ci_high": pl.Float64,
    "answer_detected": pl.Int64,
    "steps": pl.Int64,  # step results of the retrieved queries
    "steps_detected": pl.Int64,
}


def detection_summary(per_query: pl.DataFrame, level: float = 0.95) -> pl.DataFrame:
    """The detection rate over every control query (frequency 0) and by frequency, with n."""
    rows = []
    for frequency in [0, *sorted(set(per_query["frequency"].to_list()))] if per_query.height else []:
        sub = per_query if frequency == 0 else per_query.filter(pl.col("frequency") == frequency)
        hit = sub.filter(pl.col("retrieved"))
        n, detected = hit.height, int(hit["detected"].sum() or 0)
        low, high = wilson(detected, n, level)
        rows.append(
            {
                "frequency": frequency,
                "queries": sub.height,
                "retrieved": n,
                "detected": detected,
                "detection_rate": detected / n if n else math.nan,
                "ci_low": low,
                "ci_high": high,
                "answer_detected": int(hit["answer_detected"].sum() or 0),
                "steps": int(hit["steps"].sum() or 0),
                "steps_detected": int(hit["steps_detected"].sum() or 0),
            }
        )
    return pl.DataFrame(rows, schema=SUMMARY_SCHEMA)
