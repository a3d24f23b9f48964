"""Intervals for the report's means and proportions: percentile bootstrap and Wilson."""

from __future__ import annotations

import math

import numpy as np


def mean_interval(values: np.ndarray, draws: int, level: float, rng: np.random.Generator) -> tuple[float, float, float]:
    """Mean and percentile-bootstrap interval of the mean of finite values (NaN if none)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    if v.size == 1:
        return float(v[0]), float("nan"), float("nan")
    boot = v[rng.integers(0, v.size, size=(draws, v.size))].mean(axis=1)
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return float(v.mean()), float(lo), float(hi)


def wilson(successes: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion."""
    if trials == 0:
        return float("nan"), float("nan")
    z = {0.9: 1.6449, 0.95: 1.96, 0.99: 2.5758}.get(level, 1.96)
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return max(0.0, centre - half), min(1.0, centre + half)
