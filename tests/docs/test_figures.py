"""The documented figures come from the files the benches wrote: every decimal figure on the
demo's page, in the projection-accuracy section and in the README's headline table is a value
printed in a result file that text cites (rounded)."""

from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# (file, heading of the section checked; None: the whole file)
SECTIONS = (
    ("docs/demo.md", None),
    ("docs/performance.md", "## Projection accuracy"),
    ("README.md", "## Headline figures"),
)
CITED = re.compile(r"bench/results/[\w.-]+\.txt")
DECIMAL = re.compile(r"(?<![\w.])-?\d+\.\d+(?:e[-+]?\d+)?(?![\d.])")
PRINTED = re.compile(r"-?\d+\.\d+(?:e[-+]?\d+)?")


def section(text: str, heading: str) -> str:
    """From ``heading`` to the next heading of its level or above."""
    start = text.index(heading)
    level = len(heading) - len(heading.lstrip("#"))
    end = re.compile(rf"\n#{{1,{level}}} ").search(text, start + len(heading))
    return text[start : end.start() if end else len(text)]


def printed_values(paths: list[Path]) -> list[Decimal]:
    return [Decimal(m) for path in paths for m in PRINTED.findall(path.read_text())]


def unsourced(text: str, values: list[Decimal]) -> list[str]:
    """The decimal figures of `text` that no printed value rounds to (half up, as a reader would)."""
    missing = []
    for match in DECIMAL.finditer(text):
        quoted = Decimal(match.group())
        unit = Decimal(1).scaleb(quoted.as_tuple().exponent)
        try:
            if any(v.quantize(unit, rounding=ROUND_HALF_UP) == quoted for v in values):
                continue
        except InvalidOperation:
            pass
        missing.append(f"{match.group()} in '{text[max(0, match.start() - 40) : match.end() + 10]}'")
    return missing


@pytest.mark.parametrize(("file", "heading"), SECTIONS)
def test_every_decimal_figure_is_printed_in_a_cited_result_file(file, heading):
    text = (ROOT / file).read_text()
    if heading is not None:
        text = section(text, heading)
    cited = sorted({ROOT / c for c in CITED.findall(text)})
    assert cited, f"{file} '{heading}' cites no bench/results file"
    assert all(path.exists() for path in cited), [str(p) for p in cited if not p.exists()]
    assert unsourced(text, printed_values(cited)) == []


def test_a_typed_figure_is_caught():
    values = printed_values([ROOT / "bench/results/lds-2026-11-26.txt"])
    assert unsourced("EK-FAC 0.358 [0.257, 0.460]", values) == []
    assert len(unsourced("EK-FAC 0.79 [0.257, 0.469]", values)) == 2  # the README's old, typed r = 0.79
    assert unsourced("p 1.4e-05", printed_values([ROOT / "bench/results/demo-findings-2026-11-26.txt"])) == []
    assert len(unsourced("p 1.4e-06", values)) == 1  # the exponent counts
