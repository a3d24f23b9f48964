"""Method and approximations: what the numbers of the other sections are, and how exact."""

from __future__ import annotations

import html

from ..analysis import Analysis
from ..concentration import share_bound
from ..formatting import pct
from ..section import Section


def body(a: Analysis, figs: dict[str, bytes]) -> str:
    s = a.stats
    return (
        "<ul>"
        f"<li>Scores: EK-FAC influence of each document on log p(completion | prompt); positive means the document "
        f"raised it. {a.n_documents:,} documents, {a.queries.height} queries.</li>"
        "<li>Correlations are exact: merged per-shard sums (n, means and co-moments) give the same Pearson r as the "
        "full score matrix.</li>"
        f"<li>Shares of positive influence are exact up to rank {s.top_values.shape[1]} (exact per-shard top lists) "
        f"and for all ranks past the last positive score; in between they come from a histogram with "
        f"{s.bins_per_octave} log-spaced bins per octave, whose error is bounded per value (at most "
        f"{pct(share_bound(s.bins_per_octave), 1)} of the share, reported in concentration.parquet as share_error).</li>"
        f"<li>Power-law fits: least squares of log score on log rank over the top of each ranking: at most "
        f"{a.config.fit_ranks} ranks and at most a tenth of the query's positive documents.</li>"
        f"<li>Intervals: {int(100 * a.config.level)}% percentile bootstrap over queries ({a.config.bootstrap} draws), "
        f"stratified by kind for correlations; Wilson intervals for proportions; the permutation test shuffles "
        f"kind labels among reasoning queries ({a.config.permutations} permutations).</li>"
        "<li>Categories: factual kinds " + html.escape(", ".join(a.config.factual_kinds)) + "; controls "
        + html.escape(", ".join(a.config.control_kinds)) + "; every other kind counts as reasoning.</li>"
        "<li>All tables are in the Parquet files next to this page.</li></ul>"
    )


SECTION = Section("notes", "Method and approximations", body)
