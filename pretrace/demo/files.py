"""Writing the demo's record files in the formats users bring: JSONL, gzipped JSONL, Parquet.

Every write goes to a temporary name and is renamed when complete, so a killed run leaves no
half-written file, and the bytes depend only on the records, so rebuilding changes no hash.
"""

from __future__ import annotations

import gzip
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pretrace.inputs.corpus import CORPUS_SUFFIXES


def _jsonl(records: Sequence[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()


def _encode(path: Path, records: Sequence[dict]) -> bytes:
    name = path.name
    if name.endswith(".jsonl"):
        return _jsonl(records)
    if name.endswith(".jsonl.gz"):
        return gzip.compress(_jsonl(records), mtime=0)
    if name.endswith(".parquet"):
        columns = list(dict.fromkeys(k for r in records for k in r))
        schema = pa.schema([(k, pa.string()) for k in columns])
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(list(records), schema=schema), buffer)
        return buffer.getvalue()
    raise ValueError(f"cannot write {path}: the name must end with one of {CORPUS_SUFFIXES}")


def write_records(path: Path, records: Sequence[dict[str, object]]) -> Path:
    """Write records atomically, in the format path's suffix names (Parquet: string fields)."""
    return write_atomically(path, _encode(path, records))


def write_atomically(path: Path, data: bytes) -> Path:
    """Write ``data`` under a temporary name beside ``path`` and rename it into place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path
