"""Cut-offs relative to the corpus: every top-k the report reads, as a count and as a fraction of
the corpus, with a warning where one covers more than 5% of it (`pretrace.analyses.cutoffs`)."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from pretrace.analyses.analysis import Analysis
from pretrace.analyses.cutoffs import PAPER_DOCUMENTS, WARN_FRACTION
from pretrace.report.formatting import pct
from pretrace.report.html import table
from pretrace.report.section import Section


@dataclass
class Cutoffs:
    cutoffs: pl.DataFrame  # analysis, k, corpus, fraction, defined_by, paper_equivalent_k, too_wide


def compute(a: Analysis) -> Cutoffs:
    schema = {
        "analysis": pl.String,
        "k": pl.Int64,
        "corpus": pl.Int64,
        "fraction": pl.Float64,
        "defined_by": pl.String,
        "paper_equivalent_k": pl.Int64,
        "too_wide": pl.Boolean,
    }
    return Cutoffs(pl.DataFrame([c.row() for c in a.cutoffs()], schema=schema))


def reading(a: Analysis) -> list[str]:
    out = []
    for c in a.cutoffs():
        text = (
            f"{c.analysis}: k = {c.k:,} documents, {pct(c.fraction, 2)} of the corpus's {c.corpus:,} "
            f"(set as a {c.defined_by}; the same fraction of Ruis et al.'s {PAPER_DOCUMENTS:,} documents is "
            f"{c.paper_equivalent:,})."
        )
        if c.too_wide:
            text += (
                f" Warning: this cut-off covers more than {pct(WARN_FRACTION, 0)} of the corpus, so finding "
                "something in it says little; read it against the corpus base rates and the baselines."
            )
        out.append(text)
    return out


def body(a: Analysis, figs: dict[str, bytes]) -> str:
    return table(
        a.result(compute).cutoffs,
        {
            "analysis": "analysis",
            "k": "k",
            "fraction": "share of corpus",
            "defined_by": "set as",
            "paper_equivalent_k": f"same share of {PAPER_DOCUMENTS:,}",
            "too_wide": f"over {pct(WARN_FRACTION, 0)}",
        },
        formats={"fraction": lambda v: pct(v, 2)},
        text=("analysis", "defined_by"),
    )


SECTION = Section("cutoffs", "Cut-offs relative to the corpus", body, reading, compute=compute)
