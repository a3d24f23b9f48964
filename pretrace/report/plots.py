"""What every plot of the report shares: PNG encoding, kind colours, the "no data" panel.

matplotlib's object API only: no pyplot, no global backend.
"""

from __future__ import annotations

import io

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

DPI = 90
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]


def kind_colors(kinds: list[str]) -> dict[str, str]:
    """One colour per kind, in the order given, so a kind has the same colour in every plot."""
    return {k: PALETTE[i % len(PALETTE)] for i, k in enumerate(kinds)}


def png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return buffer.getvalue()


def error_bars(mean, low, high) -> np.ndarray:
    """matplotlib's (2, n) error bars of intervals around means: missing bounds draw none, and
    an interval of identical values, which can sit a rounding error off its mean, draws none
    instead of a negative length (which matplotlib refuses)."""
    mean, low, high = (np.atleast_1d(np.asarray(x, dtype=float)) for x in (mean, low, high))
    return np.clip(np.nan_to_num(np.stack([mean - low, high - mean]), nan=0.0), 0, None)


def empty(ax: Axes, text: str = "no data") -> None:
    """Say in the panel that there is nothing to plot."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])
