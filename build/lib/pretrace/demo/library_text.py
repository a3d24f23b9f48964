"""Real code and prose: CPython's standard library and its documentation topics.

These documents are the "unrelated" bulk of the demo corpus, against which the influence of
the factual and procedural documents is measured. They come from the shipped `library_text`
snapshot (`pretrace.demo.snapshots`, CPython 3.11.7's), not from the running interpreter, so
the draw for a seed is the same everywhere.
"""

from __future__ import annotations

import random

from pretrace.demo.snapshots import LIBRARY_TEXT, read_snapshot

MIN_CHARS, MAX_CHARS = 200, 1000
UNITS_PER_FILE = 3
"""At most this many functions or classes per file, so the code spans many modules."""

Record = dict[str, str]


def code_documents(n: int, rng: random.Random) -> list[Record]:
    """n whole functions, methods or classes of MIN_CHARS..MAX_CHARS from files drawn by rng."""
    files = list(read_snapshot(LIBRARY_TEXT)["code"])
    rng.shuffle(files)
    records: list[Record] = []
    for path, units in files:
        records += [{"id": f"code/{path}:{line}", "text": text, "source": "code", "path": path} for line, text in units]
        if len(records) >= n:
            return records[:n]
    return records


def prose_documents(n: int, rng: random.Random) -> list[Record]:
    """n chunks of the Python documentation topics that pydoc ships, drawn by rng."""
    chunks = [
        {"id": f"prose/{name}/{i}", "text": chunk, "source": "prose", "topic": name}
        for name, i, chunk in read_snapshot(LIBRARY_TEXT)["prose"]
    ]
    return rng.sample(chunks, min(n, len(chunks)))
