"""The report as one self-contained HTML page: inline CSS, plots as base64 PNG, no scripts."""

from __future__ import annotations

import html
from collections.abc import Sequence
from datetime import UTC, datetime

from pretrace.analyses.analysis import Analysis
from pretrace.report.html import reading
from pretrace.report.sections import CONTENTS, SECTIONS

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{margin-bottom:.2em} h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
nav a{margin-right:1em} .summary{color:#555}
.reading{background:#f5f7fa;border-left:4px solid #4a78b0;padding:.6em 1em;margin:1em 0}
.reading p{margin:.3em 0}
figure{margin:1em 0} figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#555;font-size:.9em}
table{border-collapse:collapse;font-size:.85em;margin:.8em 0}
th,td{border:1px solid #ddd;padding:.25em .5em;text-align:right;vertical-align:top}
th{background:#f0f0f0} td.text,th.text{text-align:left}
td.excerpt{text-align:left;font-family:ui-monospace,monospace;font-size:.9em;max-width:600px;white-space:pre-wrap}
details{margin:.4em 0;border:1px solid #e5e5e5;padding:.3em .6em;border-radius:4px}
summary{cursor:pointer} .qa{font-family:ui-monospace,monospace;background:#fafafa;padding:.3em;white-space:pre-wrap}
.tokens{font-family:ui-monospace,monospace;font-size:.9em;white-space:pre-wrap;max-width:900px;border:1px solid #eee;padding:.3em}
.found{background:#e3f4e1}
"""


def render(
    a: Analysis,
    figs: dict[str, bytes],
    readings: dict[str, list[str]],
    title: str = "pretrace influence report",
    shards: int | None = None,
    left_out: Sequence[str] = (),
) -> str:
    """The page: a summary line (and the corpus files left out), a navigation bar, then each
    section with its reading first."""
    counts = a.queries.group_by("kind", maintain_order=True).len()
    kinds = ", ".join(f"{k} {n}" for k, n in counts.iter_rows())
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    summary = (
        f"{a.n_documents:,} documents"
        + (f" in {shards} shards" if shards is not None else "")
        + f" · {a.queries.height} queries ({kinds}) · top/bottom k = {a.config.k} · generated {when}"
    )
    nav = "".join(f'<a href="#{sid}">{html.escape(title)}</a>' for sid, title in CONTENTS)
    sections = "".join(
        f'<section id="{s.id}"><h2>{html.escape(s.title)}</h2>'
        + (reading(readings[s.id]) if s.id in readings else "")
        + s.html(a, figs)
        + "</section>"
        for s in SECTIONS
    )
    return (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1><p class='summary'>{html.escape(summary)}</p>"
        + (f"<p class='summary'>Left out (`exclude_files`): {html.escape(', '.join(left_out))}</p>" if left_out else "")
        + f"<nav>{nav}</nav>{sections}</body></html>"
    )
