"""Paired tests: two methods measured on the same queries are compared query by query.

The primary test is the sign-flip permutation test of the mean difference (exact over all 2^n
sign patterns for n <= ``EXACT_UP_TO``, else Monte Carlo with p = (1 + hits) / (1 + draws)): it
tests the mean the report prints, assuming only that under the null each query's difference is
as likely positive as negative. Wilcoxon's signed-rank test (scipy, two-sided, zero differences
dropped) is given beside it.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

EXACT_UP_TO = 14


@dataclass(frozen=True)
class PairedTest:
    n: int  # queries with both values finite
    mean_difference: float  # mean of first - second
    permutation_p: float  # two-sided sign-flip permutation p of the mean difference
    wilcoxon_p: float  # two-sided Wilcoxon signed-rank p (NaN when every difference is 0 or n < 2)


def paired_test(first: np.ndarray, second: np.ndarray, draws: int = 10_000, seed: int = 0) -> PairedTest:
    """Compare two methods' values on the same queries (``first[i]`` and ``second[i]`` belong to query i)."""
    a, b = np.asarray(first, np.float64), np.asarray(second, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values need one value per query from each method: {a.shape} vs {b.shape}")
    d = (a - b)[np.isfinite(a) & np.isfinite(b)]
    if d.size == 0:
        return PairedTest(0, math.nan, math.nan, math.nan)
    return PairedTest(int(d.size), float(d.mean()), sign_flip_p(d, draws, seed), _wilcoxon(d))


def sign_flip_p(d: np.ndarray, draws: int = 10_000, seed: int = 0) -> float:
    """Two-sided p of |mean(d)| under random signs: exact for small n, Monte Carlo beyond."""
    d = np.asarray(d, np.float64)
    observed = abs(d.mean()) - 1e-12 * max(1.0, float(np.abs(d).max()))
    if d.size <= EXACT_UP_TO:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=d.size)))
        return float(np.mean(np.abs(signs @ d / d.size) >= observed))
    signs = np.random.default_rng(seed).choice((1.0, -1.0), size=(draws, d.size))
    hits = int(np.sum(np.abs(signs @ d / d.size) >= observed))
    return (1 + hits) / (1 + draws)


def _wilcoxon(d: np.ndarray) -> float:
    from scipy import stats

    nonzero = d[d != 0]
    if nonzero.size < 2:
        return math.nan
    return float(stats.wilcoxon(nonzero, zero_method="wilcox", alternative="two-sided").pvalue)
