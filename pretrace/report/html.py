"""HTML pieces the sections are written with: tables, inline figures, readings, values with intervals."""

from __future__ import annotations

import base64
import html
from collections.abc import Callable

import polars as pl

from pretrace.report.formatting import interval, num, small_n_mark

Formatter = Callable[[object], str]


def _fmt(v: object) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return num(v, 3)
    if isinstance(v, list):
        return ", ".join(_fmt(x) for x in v)
    return str(v)


def table(
    df: pl.DataFrame, columns: dict[str, str], formats: dict[str, Formatter] | None = None, text: tuple[str, ...] = ()
) -> str:
    """An HTML table of the given columns (name -> header)."""
    formats = formats or {}
    head = "".join(f'<th class="{"text" if c in text else ""}">{html.escape(h)}</th>' for c, h in columns.items())
    body = []
    for row in df.select(list(columns)).iter_rows(named=True):
        cells = "".join(
            f'<td class="{"text" if c in text else ""}">{html.escape(formats.get(c, _fmt)(row[c]))}</td>'
            for c in columns
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def wide_table(df: pl.DataFrame) -> str:
    """An HTML table of every column, headed by the column names; the first column is ``kind``."""
    return table(df, {c: c for c in df.columns}, text=("kind",))


def figure(name: str, data: bytes, caption: str) -> str:
    """A PNG inlined as a base64 data URL, so the page needs no other file."""
    encoded = base64.b64encode(data).decode()
    return (
        f'<figure id="fig-{name}"><img alt="{html.escape(caption)}" data-figure="{name}" '
        f'src="data:image/png;base64,{encoded}"><figcaption>{html.escape(caption)}</figcaption></figure>'
    )


def reading(lines: list[str]) -> str:
    """A section's plain-language reading, one paragraph a line."""
    return '<div class="reading">' + "".join(f"<p>{html.escape(x)}</p>" for x in lines) + "</div>"


def with_ci(
    df: pl.DataFrame,
    value: str,
    lo: str,
    hi: str,
    name: str,
    fmt: Callable[[float], str] = lambda x: num(x, 3),
    n: str = "queries",
) -> pl.DataFrame:
    """``df`` with a column ``name``: the value and its interval as one string; an interval over
    fewer than ``SMALL_N`` queries (the count in column ``n``, when ``df`` has it) is marked."""
    columns = [value, lo, hi] + ([n] if n in df.columns else [])

    def cell(r: dict) -> str:
        bracket = interval(r[lo], r[hi], fmt, missing="")
        return f"{fmt(r[value])} {bracket}{small_n_mark(r.get(n))}" if bracket else fmt(r[value])

    return df.with_columns(pl.struct(columns).map_elements(cell, return_dtype=pl.String).alias(name))
