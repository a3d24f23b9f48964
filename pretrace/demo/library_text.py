"""Real code and prose already on the machine: CPython's standard library and its documentation.

These documents are the "unrelated" bulk of the demo corpus, against which the influence of
the factual and procedural documents is measured.
"""

from __future__ import annotations

import ast
import random
import sysconfig
import textwrap
import tokenize
from collections.abc import Iterator
from pathlib import Path
from pydoc_data.topics import topics

MIN_CHARS, MAX_CHARS = 200, 1000
_UNITS_PER_FILE = 3
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

Record = dict[str, str]


def _stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(
        p
        for p in root.rglob("*.py")
        if not _SKIP_DIRS.intersection(p.relative_to(root).parts[:-1])
        and not p.parts[-2].startswith("config-")
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


def code_documents(n: int, rng: random.Random) -> list[Record]:
    """n whole functions, methods or classes of MIN_CHARS..MAX_CHARS from files drawn by rng."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = _stdlib_files()
    rng.shuffle(files)
    records: list[Record] = []
    for path in files:
        try:
            with tokenize.open(path) as f:
                source = f.read()
            tree = ast.parse(source)
        except (SyntaxError, UnicodeDecodeError):
            continue
        rel = path.relative_to(root).as_posix()
        kept = 0
        for lineno, text in _units(tree, source.splitlines(keepends=True)):
            if MIN_CHARS <= len(text) <= MAX_CHARS and kept < _UNITS_PER_FILE:
                records.append(
                    {"id": f"code/{rel}:{lineno}", "text": text, "source": "code", "path": rel}
                )
                kept += 1
        if len(records) >= n:
            return records[:n]
    return records


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


def prose_documents(n: int, rng: random.Random) -> list[Record]:
    """n chunks of the Python documentation topics that pydoc ships, drawn by rng."""
    chunks = [
        {"id": f"prose/{name}/{i}", "text": chunk, "source": "prose", "topic": name}
        for name in sorted(topics)
        for i, chunk in enumerate(_chunks(topics[name]))
        if len(chunk) >= MIN_CHARS
    ]
    return rng.sample(chunks, min(n, len(chunks)))
