"""What a report is computed with: its options, and the three categories query kinds fall into.

Query kinds fall into three categories: factual (``factual_kinds``), control (``control_kinds``,
and any kind ending in ``_control``: ``factual_control`` and ``reasoning_control`` are read apart,
as Ruis et al. read their factual and reasoning controls) and reasoning (every other kind:
arithmetic, slope, linear, or a user's own).
"""

from __future__ import annotations

from dataclasses import dataclass

from pretrace.analyses.concentration import FIT_RANKS, FRACTIONS

FACTUAL, REASONING, CONTROL = "factual", "reasoning", "control"


@dataclass(frozen=True)
class ReportConfig:
    k: int = 50  # top/bottom documents per query (at most the k the shards were summarized with)
    fractions: tuple[float, ...] = FRACTIONS
    fit_ranks: int = FIT_RANKS
    bootstrap: int = 2000
    permutations: int = 2000
    level: float = 0.95
    seed: int = 0
    factual_kinds: tuple[str, ...] = ("factual", "planted")  # planted: the demo's fictional facts
    control_kinds: tuple[str, ...] = ("control",)
    html_rows: int = 10  # documents per query and side shown in the HTML (all k are in Parquet)

    def category(self, kind: str) -> str:
        if kind in self.factual_kinds:
            return FACTUAL
        if kind in self.control_kinds or kind.endswith("_control"):
            return CONTROL
        return REASONING
