"""The queries in report order, and the groups of queries that every per-kind table has a row for.

Per-kind tables list factual kinds first, then planted facts (their own category, never pooled
into factual), then reasoning kinds, then controls, and add a pooled "reasoning (all)" row after
the reasoning kinds when there are several of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa

from pretrace.analyses.report_config import CATEGORIES, REASONING, ReportConfig
from pretrace.errors import InputError

POOLED = "reasoning (all)"


def queries_frame(query_ids: list[str], queries: pa.Table, config: ReportConfig) -> pl.DataFrame:
    """id, kind, category, prompt, completion, answer, logprob, and whose completion it is (source),
    the model's greedy answer and whether it is correct, of the scored queries, in kind order
    (scored order within a kind); missing optional columns are filled in."""
    table = pl.from_arrow(queries)
    missing = sorted(set(query_ids) - set(table["id"].to_list()))
    if missing:
        raise InputError(f"scored queries missing from the queries table (rescore the shards): {missing[:5]}")
    defaults = {
        "prompt": "",
        "completion": "",
        "answer": None,
        "logprob": float("nan"),
        "source": "given",
        "model_completion": None,
        "correct": None,
    }
    types = {"answer": pl.String, "model_completion": pl.String, "correct": pl.Boolean}
    for name, value in defaults.items():
        if name not in table.columns:
            table = table.with_columns(pl.lit(value, dtype=types.get(name)).alias(name))
    table = table.filter(pl.col("id").is_in(query_ids))
    categories = {kind: config.category(kind) for kind in table["kind"].unique().to_list()}
    table = table.with_columns(category=pl.col("kind").replace_strict(categories, return_dtype=pl.String))
    rank = {c: i for i, c in enumerate(CATEGORIES)}
    table = (
        table.with_columns(
            _c=pl.col("category").replace_strict(rank, return_dtype=pl.Int32),
            _o=pl.col("id").replace_strict({q: i for i, q in enumerate(query_ids)}, return_dtype=pl.Int64),
        )
        .sort(["_c", "kind", "_o"])
        .drop(["_c", "_o"])
    )
    return table.select(
        ["id", "kind", "category", "prompt", "completion", "answer", "logprob", "source", "model_completion", "correct"]
    )


def kind_order(queries: pl.DataFrame) -> list[str]:
    """The kinds in the order of the queries frame."""
    return list(dict.fromkeys(queries["kind"].to_list()))


@dataclass(frozen=True)
class KindGroup:
    """One row of a per-kind table: a kind, or all reasoning kinds pooled."""

    label: str
    category: str
    mask: np.ndarray  # which rows of the queries frame belong to the group
    ids: list[str]

    def row(self) -> dict[str, str]:
        """The columns every per-kind table starts with."""
        return {"kind": self.label, "category": self.category}


def kind_groups(queries: pl.DataFrame) -> list[KindGroup]:
    """A group per kind, plus the pooled reasoning group when there are several reasoning kinds."""
    ids = np.asarray(queries["id"].to_list(), dtype=object)
    kinds = queries["kind"].to_numpy()
    cats = queries["category"].to_numpy()
    labelled = [(k, cats[kinds == k][0], kinds == k) for k in kind_order(queries)]
    if len({k for k, c, _ in labelled if c == REASONING}) > 1:
        last_reasoning = sum(1 for _, c, _ in labelled if CATEGORIES.index(c) <= CATEGORIES.index(REASONING))
        labelled.insert(last_reasoning, (POOLED, REASONING, cats == REASONING))
    return [KindGroup(label, cat, mask, ids[mask].tolist()) for label, cat, mask in labelled]


def reasoning_label(groups: list[KindGroup]) -> str | None:
    """The group that speaks for reasoning queries in the readings: the pooled one, else the only kind."""
    labels = [g.label for g in groups if g.category == REASONING]
    if POOLED in labels:
        return POOLED
    return labels[0] if labels else None
