"""Corrections for multiplicity: the report runs many tests, so each p-value is read adjusted
across all of them (the family: every test on the page, ``pretrace.report.sections.report_tests``).

Holm's step-down method controls the family-wise error rate without assuming independence;
Benjamini-Hochberg's step-up method controls the false discovery rate (under independence or
positive dependence). NaN p-values (tests that could not run) are left out of the family and stay NaN.
"""

from __future__ import annotations

import numpy as np


def holm(p: np.ndarray) -> np.ndarray:
    """Holm-adjusted p-values: the i-th smallest of m is max_{j<=i} min(1, (m - j + 1) p_(j))."""
    return _adjusted(p, step_down=True)


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg-adjusted p-values: the i-th smallest of m is min_{j>=i} min(1, m p_(j) / j)."""
    return _adjusted(p, step_down=False)


def _adjusted(p: np.ndarray, step_down: bool) -> np.ndarray:
    values = np.asarray(p, dtype=np.float64)
    out = np.full(values.shape, np.nan)
    finite = np.nonzero(np.isfinite(values))[0]
    m = finite.size
    if m == 0:
        return out
    order = finite[np.argsort(values[finite], kind="stable")]
    sorted_p = values[order]
    position = np.arange(1, m + 1)
    if step_down:
        adjusted = np.maximum.accumulate(np.minimum(1.0, (m - position + 1) * sorted_p))
    else:
        adjusted = np.minimum.accumulate(np.minimum(1.0, m * sorted_p / position)[::-1])[::-1]
    out[order] = adjusted
    return out
