"""How concentrated each query's positive influence is: top-fraction shares and power-law fits.

Share of the top m documents: S(m) / P, where S(m) = sum of max(s, 0) over the m highest
scores and P = total positive influence.

- For m <= L (the exact top list length, 1000 by default) S(m) is exact.
- For m >= the number of positive documents, S(m) = P exactly.
- Otherwise S(m) comes from the log-binned histogram of positive scores: whole bins above the
  cut add their exact sums; of the bin the cut falls in (c documents in [lo, hi), sum T) the top
  r documents hold a sum X with
      max(r T / c, r lo, T - (c - r) hi) <= X <= min(r hi, T - (c - r) lo),
  (the top r of a bin average at least the bin's mean, and every value lies in [lo, hi)).
  The estimate is the midpoint of that interval; its half-width is reported as the error
  bound. Since X >= r lo and the width is at most r (hi - lo), the bound is never more than
  (2^(1/B) - 1) / 2 of S(m) (2.2 % for B = 16 bins per octave) and is usually far smaller.

Power law: the exponent of score ~ rank^slope over ranks 1..R of the exact top list. For scores
drawn from a Pareto tail P(S > s) ~ s^-a the expected slope is -1/a. Three definitions, one per
row (the ``fit`` column), never mixed in a table row:

- ``paper``, Ruis et al.'s: least squares of log score on log rank, R = 500 (``PAPER_RANKS``);
- ``head``: the same least squares over R = min(fit_ranks (1000), L, max(10, positive documents
  / 10)), which on a small corpus stops before its positive scores run out;
- ``mle``: maximum likelihood as Clauset, Shalizi & Newman (2009) fit a continuous power law:
  for x_min the score at rank R, a = (R - 1) / sum_{r<R} ln(s_r / x_min) (Hill's estimator),
  slope = -1/a, standard error |slope| / sqrt(R - 1); R is chosen, among ranks
  ``MIN_TAIL`` + 1 ... min(fit_ranks, L, positive documents), as the one whose fitted tail is
  closest to the scores above x_min (smallest Kolmogorov-Smirnov distance). The row's ``ranks``
  is R: x_min is the score at that rank.

Least squares on log-log is biased: consecutive ranks' log scores are strongly correlated
(each is a sum of the spacings above it), so the fitted slope leans toward the few top ranks
and its R^2 overstates the fit; its error is not the regression's. Slopes of factual and
reasoning queries are compared with Welch's t-test under every definition.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pretrace.analyses.shard_statistics import ShardStatistics, bin_edges, fraction_rank

FRACTIONS = (1e-4, 1e-3, 1e-2, 1e-1)
FIT_RANKS = 1000
PAPER_RANKS = 500
FITS = ("paper", "head", "mle")
MIN_TAIL = 10  # scores above x_min at least, for a maximum-likelihood fit
PERCENTILES = tuple(range(5, 101, 5))
"""Percentiles of a query's documents on one side of its ranking (Ruis et al.'s influence-per-nat
curves: the top p% of the positively, or negatively, influential documents)."""
DOCUMENT_COUNTS = (1, 10, 100, 1_000, 10_000, 100_000, 1_000_000)
"""The same sums against absolute numbers of documents (capped by the side's size)."""


@dataclass
class TopSum:
    value: float  # estimate of the sum of positive scores of the top m documents
    error: float  # |value - truth| <= error
    exact: bool


def top_sum(stats: ShardStatistics, q: int, m: int, side: str = "positive") -> TopSum:
    """Sum of the magnitudes of query q's m most extreme scores on one side (the m highest
    positive scores, or the m most negative scores' magnitudes), with an error bound."""
    tail = stats.tail(side)
    inside = int(tail.count[q])
    total = float(tail.total[q])
    if m <= 0 or inside == 0:
        return TopSum(0.0, 0.0, True)
    if m >= inside:
        return TopSum(total, 0.0, True)
    top = tail.extreme[q]
    if m <= top.size:
        return TopSum(float(np.clip(top[:m].astype(np.float64), 0, None).sum()), 0.0, True)
    counts = tail.hist_count[q][::-1]
    sums = tail.hist_sum[q][::-1]
    bins = (tail.hist_offset + np.arange(tail.hist_count.shape[1]))[::-1]
    before = np.concatenate([[0], np.cumsum(counts)])
    j = int(np.searchsorted(before[1:], m))  # first bin (from the top) where the cumulative count reaches m
    full = float(sums[:j].sum())
    r, c, t = m - int(before[j]), int(counts[j]), float(sums[j])
    if r == c:
        return TopSum(full + t, 0.0, False)
    lo, hi = (float(x[0]) for x in bin_edges(np.array([bins[j]]), stats.bins_per_octave))
    lower = max(r * t / c, r * lo, t - (c - r) * hi)
    upper = max(min(r * hi, t - (c - r) * lo), lower)
    return TopSum(full + (lower + upper) / 2, (upper - lower) / 2, False)


def share_bound(bins_per_octave: int) -> float:
    """The worst-case relative error of a histogram share: (2^(1/B) - 1) / 2."""
    return (2 ** (1 / bins_per_octave) - 1) / 2


def shares(stats: ShardStatistics, fractions=FRACTIONS) -> list[dict]:
    """Rows (query_id, fraction, documents, share, share_error, exact) for every query and fraction."""
    rows = []
    for q, query_id in enumerate(stats.query_ids):
        total = float(stats.positive_sum[q])
        for f in fractions:
            m = fraction_rank(f, stats.n)
            s = top_sum(stats, q, m)
            rows.append(
                {
                    "query_id": query_id,
                    "fraction": float(f),
                    "documents": m,
                    "share": s.value / total if total > 0 else float("nan"),
                    "share_error": s.error / total if total > 0 else float("nan"),
                    "exact": s.exact,
                }
            )
    return rows


def share_curve(stats: ShardStatistics, q: int, points: int = 41) -> tuple[np.ndarray, np.ndarray]:
    """(fractions, shares) from one document to all of them, log-spaced, for plotting."""
    n = max(stats.n, 1)
    fractions = np.logspace(np.log10(1 / n), 0, points)
    total = float(stats.positive_sum[q])
    values = [top_sum(stats, q, fraction_rank(f, n)).value / total if total > 0 else np.nan for f in fractions]
    return fractions, np.array(values)


def percentile_rank(percentile: float, count: int) -> int:
    """How many documents the top ``percentile`` % of ``count`` is: ceil(p count / 100)."""
    return min(count, max(0, math.ceil(percentile * count / 100 - 1e-9)))


def side_sums(stats: ShardStatistics, percentiles=PERCENTILES, counts=DOCUMENT_COUNTS) -> list[dict]:
    """Rows (query_id, side, by, at, documents, total, error, exact): the summed influence of the
    top ``at`` % (by = "percentile") or top ``at`` (by = "documents") of each query's positively
    and negatively influential documents; negative sums are negative, as the scores are."""
    rows = []
    for q, query_id in enumerate(stats.query_ids):
        for side, sign in (("positive", 1.0), ("negative", -1.0)):
            inside = int(stats.tail(side).count[q])
            cuts = [("percentile", p, percentile_rank(p, inside)) for p in percentiles]
            cuts += [("documents", k, k) for k in counts if k <= max(inside, 1)]
            for by, at, m in cuts:
                s = top_sum(stats, q, m, side)
                rows.append(
                    {
                        "query_id": query_id,
                        "side": side,
                        "by": by,
                        "at": float(at),
                        "documents": m,
                        "total": sign * s.value,
                        "error": s.error,
                        "exact": s.exact,
                    }
                )
    return rows


@dataclass
class PowerLaw:
    slope: float
    intercept: float  # log score at rank 1 on the fitted line
    r2: float
    ranks: int


def fit_power_law(values: np.ndarray, fit_ranks: int = FIT_RANKS) -> PowerLaw:
    """Fit log(score) = intercept + slope log(rank) over the top ranks with positive scores."""
    v = np.asarray(values, dtype=np.float64)[:fit_ranks]
    v = v[: int(np.argmin(v > 0)) if (v <= 0).any() else v.size]
    if v.size < 3:
        return PowerLaw(float("nan"), float("nan"), float("nan"), int(v.size))
    x, y = np.log(np.arange(1, v.size + 1)), np.log(v)
    slope, intercept = np.polyfit(x, y, 1)
    residual = y - (intercept + slope * x)
    spread = ((y - y.mean()) ** 2).sum()
    r2 = 1 - (residual**2).sum() / spread if spread > 0 else float("nan")
    return PowerLaw(float(slope), float(intercept), float(r2), int(v.size))


def pareto_mle(x: np.ndarray, x_min: float) -> tuple[float, float]:
    """Maximum-likelihood exponent alpha of a continuous power-law density p(x) ~ x^-alpha over
    x >= x_min (Clauset et al. 2009, eq. 3.1) and its standard error (alpha - 1) / sqrt(n)."""
    v = np.asarray(x, dtype=np.float64)
    v = v[v >= x_min]
    logs = np.log(v / x_min).sum() if v.size else 0.0
    if x_min <= 0 or v.size == 0 or logs <= 0:
        return float("nan"), float("nan")
    alpha = 1.0 + v.size / logs
    return float(alpha), float((alpha - 1.0) / math.sqrt(v.size))


def fit_power_law_mle(values: np.ndarray, fit_ranks: int = FIT_RANKS, x_min_rank: int | None = None) -> PowerLaw:
    """Rank exponent by maximum likelihood over the top ranks with positive scores: x_min is the
    score at rank R (``x_min_rank``, or Clauset et al.'s choice: the R of smallest KS distance),
    the R - 1 scores above it give alpha; slope = -1 / (alpha - 1). The intercept puts the line
    through (R, x_min); R^2 is that line's on log-log axes."""
    v = np.asarray(values, dtype=np.float64)[:fit_ranks]
    v = v[: int(np.argmin(v > 0)) if (v <= 0).any() else v.size]
    r = x_min_rank if x_min_rank is not None else _clauset_rank(v)
    v = v[:r]
    alpha, _ = pareto_mle(v[:-1], float(v[-1])) if v.size >= 3 else (float("nan"), float("nan"))
    if not math.isfinite(alpha):
        return PowerLaw(float("nan"), float("nan"), float("nan"), int(v.size))
    slope = -1.0 / (alpha - 1.0)
    x, y = np.log(np.arange(1, v.size + 1)), np.log(v)
    intercept = y[-1] - slope * x[-1]
    spread = ((y - y.mean()) ** 2).sum()
    r2 = 1 - ((y - intercept - slope * x) ** 2).sum() / spread if spread > 0 else float("nan")
    return PowerLaw(float(slope), float(intercept), float(r2), int(v.size))


def _clauset_rank(v: np.ndarray, candidates: int = 48) -> int:
    """The rank R whose score, as x_min, gives the tail fit closest to the scores above it: the
    smallest KS distance between their empirical CCDF and the fitted (x / x_min)^-a, over about
    ``candidates`` log-spaced R from MIN_TAIL + 1 (all of ``v``, descending and positive, if fewer)."""
    if v.size <= MIN_TAIL + 1:
        return int(v.size)
    logs = np.log(v)
    best, best_d = v.size, math.inf
    for r in np.unique(np.geomspace(MIN_TAIL + 1, v.size, candidates).astype(int)):
        above = logs[: r - 1] - logs[r - 1]  # ln(s / x_min) of the r - 1 scores above, descending
        total = above.sum()
        if total <= 0:
            continue
        a = (r - 1) / total
        fitted = np.exp(-a * above)  # P(S >= s) under the fit
        i = np.arange(1, r)
        d = max(np.abs(i / (r - 1) - fitted).max(), np.abs((i - 1) / (r - 1) - fitted).max())
        if d < best_d:
            best, best_d = int(r), d
    return best


def head_ranks(positive_count: int, fit_ranks: int = FIT_RANKS) -> int:
    """How many top ranks count as "the top of the ranking": at most ``fit_ranks`` and at most a
    tenth of the positive documents (at least 10), so a small corpus is not fitted down to where
    its positive scores run out."""
    return min(fit_ranks, max(10, -(-int(positive_count) // 10)))


def power_laws(stats: ShardStatistics, fit_ranks: int = FIT_RANKS) -> list[dict]:
    """Rows (query_id, fit, slope, intercept, r2, ranks) of every query's power-law fits, by both
    definitions (``FITS``)."""
    rows = []
    for q, query_id in enumerate(stats.query_ids):
        head = head_ranks(stats.positive.count[q], fit_ranks)
        for name, ranks in (("paper", PAPER_RANKS), ("head", head), ("mle", fit_ranks)):
            fit = (fit_power_law_mle if name == "mle" else fit_power_law)(stats.top_values[q], ranks)
            rows.append(
                {
                    "query_id": query_id,
                    "fit": name,
                    "slope": fit.slope,
                    "intercept": fit.intercept,
                    "r2": fit.r2,
                    "ranks": fit.ranks,
                }
            )
    return rows


@dataclass
class SlopeTest:
    factual_mean: float
    reasoning_mean: float
    t: float
    dof: float
    p: float  # two-sided


def welch_test(factual: np.ndarray, reasoning: np.ndarray) -> SlopeTest:
    """Welch's two-sample t-test of mean slopes (Ruis et al. compare factual and reasoning slopes);
    NaN where either group has fewer than two finite slopes or both are constant."""
    from scipy import stats as scipy_stats

    f, r = (np.asarray(x, np.float64) for x in (factual, reasoning))
    f, r = f[np.isfinite(f)], r[np.isfinite(r)]
    means = (float(f.mean()) if f.size else math.nan, float(r.mean()) if r.size else math.nan)
    if f.size < 2 or r.size < 2 or (f.var(ddof=1) == 0 and r.var(ddof=1) == 0):
        return SlopeTest(*means, math.nan, math.nan, math.nan)
    result = scipy_stats.ttest_ind(f, r, equal_var=False)
    return SlopeTest(*means, float(result.statistic), float(result.df), float(result.pvalue))
