"""What a report is computed with: its options, and the four categories query kinds fall into.

Query kinds fall into four categories, never pooled with each other:

- factual (``factual_kinds``): questions about facts of the world the corpus states;
- planted (``planted_kinds``): facts or worked solutions planted in the corpus at known
  frequencies (the demo's fictional people, its planted reasoning problems): ground truth for
  attribution, neither factual nor reasoning questions, so no factual or reasoning row, test or
  ratio counts them;
- control (``control_kinds``, and any kind ending in ``_control``: ``factual_control`` and
  ``reasoning_control`` are read apart, as Ruis et al. read their factual and reasoning controls);
- reasoning (every other kind: arithmetic, slope, linear, or a user's own).
"""

from __future__ import annotations

from dataclasses import dataclass

from pretrace.analyses.concentration import FIT_RANKS, FRACTIONS

FACTUAL, PLANTED, REASONING, CONTROL = "factual", "planted", "reasoning", "control"
CATEGORIES = (FACTUAL, PLANTED, REASONING, CONTROL)  # the order of every per-kind table
CATEGORY_MEANING = {
    FACTUAL: "questions about facts the corpus states (one retrieval, no procedure)",
    PLANTED: (
        "facts or worked solutions planted in the corpus at known frequencies: ground truth for attribution, "
        "never counted as factual or reasoning"
    ),
    REASONING: "problems solved by a procedure (worked steps, then an answer)",
    CONTROL: "queries needing neither a stated fact nor a procedure, read apart from both",
}


@dataclass(frozen=True)
class ReportConfig:
    k: int = 50  # top/bottom documents per query (at most the k the shards were summarized with)
    top_fraction: float | None = None  # if set, k is this fraction of the corpus (at most the stored k)
    fractions: tuple[float, ...] = FRACTIONS
    fit_ranks: int = FIT_RANKS
    bootstrap: int = 2000
    permutations: int = 2000
    level: float = 0.95
    seed: int = 0
    factual_kinds: tuple[str, ...] = ("factual",)
    planted_kinds: tuple[str, ...] = ("planted", "planted_reasoning")  # the demo's planted facts and solutions
    control_kinds: tuple[str, ...] = ("control",)
    html_rows: int = 10  # documents per query and side shown in the HTML (all k are in Parquet)

    def category(self, kind: str) -> str:
        if kind in self.planted_kinds:
            return PLANTED
        if kind in self.factual_kinds:
            return FACTUAL
        if kind in self.control_kinds or kind.endswith("_control"):
            return CONTROL
        return REASONING
