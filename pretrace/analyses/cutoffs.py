"""Cut-offs relative to the corpus: a top-k means little without the corpus it is cut from.

Ruis et al. read the top 500 of about 5 million documents (0.01%); the same 500 of a 2,000-document
corpus is a quarter of it, where "the answer is in the top 500" is near-certain by construction.
Every top-k analysis of the report states its k both as a count and as a fraction of the corpus,
says which of the two defined it, and is flagged when it covers more than ``WARN_FRACTION``.
"""

from __future__ import annotations

from dataclasses import dataclass

from pretrace.analyses.shard_statistics import fraction_rank

WARN_FRACTION = 0.05
PAPER_DOCUMENTS = 5_000_000  # Ruis et al.'s pretraining sample, whose counts the report's defaults copy


@dataclass(frozen=True)
class Cutoff:
    analysis: str  # what the cut-off selects, e.g. "top documents per query"
    k: int  # documents
    corpus: int  # documents in the corpus
    defined_by: str  # "count" or "fraction"

    @property
    def fraction(self) -> float:
        return self.k / self.corpus if self.corpus else float("nan")

    @property
    def paper_equivalent(self) -> int:
        """The k that covers the same fraction of Ruis et al.'s corpus."""
        return round(self.fraction * PAPER_DOCUMENTS)

    @property
    def too_wide(self) -> bool:
        return self.fraction > WARN_FRACTION

    def row(self) -> dict:
        return {
            "analysis": self.analysis,
            "k": self.k,
            "corpus": self.corpus,
            "fraction": self.fraction,
            "defined_by": self.defined_by,
            "paper_equivalent_k": self.paper_equivalent,
            "too_wide": self.too_wide,
        }


def resolve_k(corpus: int, count: int, fraction: float | None, available: int | None = None) -> tuple[int, str]:
    """The k of a cut-off given as a count, or as a fraction of the corpus when ``fraction`` is set
    (ceil(fraction n), at least 1), capped by ``available`` (what was stored); and which defined it."""
    k, how = (fraction_rank(fraction, corpus), "fraction") if fraction is not None else (count, "count")
    return (min(k, available) if available is not None else k), how
