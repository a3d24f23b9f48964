"""Property: whatever a corpus file holds, reading and tokenizing it either yields valid shard
rows or one InputError that names the file (and the line or row); nothing else escapes."""

from __future__ import annotations

import gzip
import json
import re
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pretrace.errors import InputError
from pretrace.inputs.corpus import SHARD_SCHEMA, read_records, tokenize_documents
from pretrace.testing.tiny import tiny_tokenizer

TOKENIZER = tiny_tokenizer()
ODD = st.sampled_from(["\ud800", "\udfff", "\x00", "\x1b", "\u2028", "\ufeff", " ", "\n"])
TEXT = st.lists(ODD | st.characters(exclude_categories=()), max_size=40).map("".join)  # control chars, surrogates
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6,
)
RECORD = st.fixed_dictionaries(
    {},
    optional={
        "id": JSON_VALUES | st.text(max_size=8),
        "text": TEXT | JSON_VALUES,
        "source": TEXT | st.none(),
        "meta": JSON_VALUES,
    },
)
USABLE = st.fixed_dictionaries({"id": st.text(min_size=1, max_size=8) | st.integers(), "text": TEXT})
LINE = (
    USABLE.map(json.dumps)
    | USABLE.map(json.dumps)
    | RECORD.map(json.dumps)
    | st.sampled_from(["", "   ", "{", "[1, 2]", "null", '"text"', "\x00"])
)


def _check(path: Path, unit: str) -> None:
    try:
        table = tokenize_documents(read_records(str(path)), TOKENIZER, max_length=16, origin=str(path))
    except InputError as exc:
        message = str(exc)
        assert message.startswith(str(path)), message
        assert "\n" not in message and "Traceback" not in message
        located = re.match(re.escape(str(path)) + rf", {unit} \d+: ", message)
        whole_file = re.match(re.escape(str(path)) + r": (the file has no records|none of its|not a )", message)
        assert located or whole_file, message
        return
    assert table.schema == SHARD_SCHEMA and table.num_rows > 0
    assert all(2 <= n <= 16 for n in table.column("n_tokens").to_pylist())
    assert len(set(table.column("doc_id").to_pylist())) == table.num_rows


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(LINE, max_size=6), suffix=st.sampled_from([".jsonl", ".JSONL", ".ndjson", ".jsonl.gz"]))
def test_any_jsonl_file_reads_or_fails_with_file_and_line(lines: list[str], suffix: str) -> None:
    data = "\n".join(lines).encode("utf-8", "surrogatepass")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"corpus{suffix}"
        path.write_bytes(gzip.compress(data) if suffix.endswith(".gz") else data)
        _check(path, "line")


COLUMN = st.sampled_from([pa.string(), pa.int64(), pa.float64(), pa.bool_()])


@settings(max_examples=60, deadline=None)
@given(id_type=COLUMN, text_type=COLUMN, rows=st.lists(st.tuples(JSON_VALUES, JSON_VALUES), max_size=5))
def test_any_parquet_file_reads_or_fails_with_file_and_row(id_type, text_type, rows) -> None:
    def column(values, kind):
        cast = {
            pa.string(): str,
            pa.int64(): lambda v: int(v) if isinstance(v, (int, float)) and abs(v) < 2**62 else 0,
            pa.float64(): lambda v: float(v) if isinstance(v, (int, float)) and abs(v) < 1e300 else 0.5,
            pa.bool_(): bool,
        }[kind]
        return pa.array([None if v is None else cast(v) for v in values], kind)

    def clean(v):  # Parquet strings are UTF-8 by construction
        return v.encode("utf-8", "replace").decode() if isinstance(v, str) else json.dumps(v) if v is not None else None

    ids = [clean(r[0]) if id_type == pa.string() else r[0] for r in rows]
    texts = [clean(r[1]) if text_type == pa.string() else r[1] for r in rows]
    table = pa.table({"id": column(ids, id_type), "text": column(texts, text_type)})
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "corpus.parquet"
        pq.write_table(table, path)
        _check(path, "row")
