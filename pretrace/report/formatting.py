"""Numbers as the report's prose and tables print them."""

from __future__ import annotations

import math
from collections.abc import Callable


def num(x: float | None, digits: int = 2) -> str:
    """A number for prose and tables: ``digits`` decimals, thousands separators above 1000,
    scientific notation for very small or very large magnitudes."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    if x != 0 and abs(x) < 10**-digits:
        return f"{x:.1e}"
    if abs(x) >= 10**7:
        return f"{x:.3g}"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def corr(x: float | None) -> str:
    """A correlation coefficient: two decimals."""
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.2f}"


def pct(x: float | None, digits: int = 1) -> str:
    """A share as a percentage."""
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{100 * x:.{digits}f}%"


def interval(
    lo: float | None, hi: float | None, fmt: Callable[[float], str] = num, missing: str = "[no interval]"
) -> str:
    """``[lo, hi]`` in the format of the value it brackets, or ``missing`` when either end is unknown."""
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return missing
    return f"[{fmt(lo)}, {fmt(hi)}]"


SMALL_N = 10
"""Below this many queries a bootstrap interval is marked: resampling so few values gives
intervals that are too narrow and coarse (few distinct resamples), to be read as rough."""


def small_n_mark(n: int | None) -> str:
    """The mark appended to an interval over fewer than ``SMALL_N`` queries ("" otherwise)."""
    return f" (n = {n} < {SMALL_N}: rough)" if n is not None and 0 < n < SMALL_N else ""
