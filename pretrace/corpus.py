"""The user's corpus: listing its files, naming their partitions, reading and tokenizing records.

A corpus is a folder (or S3 prefix) of ``.jsonl``, ``.jsonl.gz`` or ``.parquet`` files of
Dolma-style records ``{"id", "text", "source", ...}``; each file becomes one shard partition.
Bad input fails here, with the file and line, before any model work starts.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import re
import unicodedata
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from pretrace.errors import InputError
from pretrace.fingerprint import DigestCache, file_fingerprint
from pretrace.storage import open_fs

CORPUS_SUFFIXES = (".jsonl.gz", ".jsonl", ".parquet")

SHARD_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("parent_id", pa.string()),
        ("chunk", pa.int32()),
        ("source", pa.string()),
        ("n_tokens", pa.int32()),
        ("input_ids", pa.list_(pa.int32())),
        ("text", pa.string()),
        ("meta", pa.string()),
    ]
)
"""Columns of a tokenized shard (the ``corpus_shards`` asset): one row per (chunk of a) document."""

_RESERVED = ("id", "text", "source")
_MAX_KEY_LENGTH = 64


@dataclass(frozen=True)
class CorpusFile:
    """One corpus file as listed: its local path, or its S3 URL and ETag (see `fingerprint`)."""

    name: str
    url: str
    size: int
    etag: str | None  # None for a local file, which is fingerprinted by its SHA-256

    def fingerprint(self, cache: DigestCache) -> str:
        """Changes exactly when the file's content does (`pretrace.fingerprint`)."""
        if self.etag is None:
            return file_fingerprint(self.url, {}, cache)
        return file_fingerprint(None, {"ETag": self.etag, "size": self.size, "name": self.url}, cache)


def _suffix(name: str) -> str | None:
    return next((s for s in CORPUS_SUFFIXES if name.endswith(s)), None)


def list_corpus_files(root_url: str) -> list[CorpusFile]:
    """The corpus files directly inside ``root_url``, sorted by name; other files are ignored."""
    fs, path = open_fs(root_url)
    try:
        is_dir = fs.isdir(path)
    except Exception as exc:  # unreachable endpoint, refused credentials: the user's to fix
        raise InputError(
            f"cannot read the corpus folder {root_url} ({type(exc).__name__}: {exc}); check the "
            "URL, AWS_ENDPOINT_URL(_S3) and the AWS credentials"
        ) from exc
    if not is_dir:
        raise InputError(
            f"corpus folder {root_url} does not exist or is not a folder; set `corpus:` in "
            "pretrace.yaml to the folder or s3:// prefix holding your .jsonl, .jsonl.gz or "
            ".parquet files"
        )
    local = isinstance(fs, LocalFileSystem)
    files = []
    for entry in fs.ls(path, detail=True):
        name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
        if entry["type"] != "file" or name.startswith(".") or _suffix(name) is None:
            continue
        files.append(
            CorpusFile(
                name=name,
                url=entry["name"] if local else fs.unstrip_protocol(entry["name"]),
                size=int(entry["size"]),
                etag=None if local else str(entry["ETag"]).strip('"'),
            )
        )
    return sorted(files, key=lambda f: f.name)


def shard_key(file_name: str) -> str:
    """A short, readable partition key for a corpus file, safe for Dagster and any filesystem.

    Keys use only ``[a-z0-9._-]`` (no ``,``, ``|``, ``...``, accents transliterated, and no
    case-only differences that would collide on macOS or Windows). A name that is already such
    a key is kept; otherwise the sanitised name gets ``-`` and 10 hex digits of the name's
    SHA-256, so two names that sanitise alike still get different keys.
    """
    ascii_name = unicodedata.normalize("NFKD", file_name).encode("ascii", "ignore").decode()
    clean = re.sub(r"[^a-z0-9._-]+", "-", ascii_name.lower())
    clean = re.sub(r"\.{2,}", ".", clean).strip("-._")
    if clean == file_name and len(clean) <= _MAX_KEY_LENGTH:
        return clean
    digest = hashlib.sha256(file_name.encode()).hexdigest()[:10]
    head = clean[: _MAX_KEY_LENGTH - len(digest) - 1].rstrip("-._")
    return f"{head}-{digest}" if head else f"shard-{digest}"


def read_records(url: str) -> Iterator[dict[str, Any]]:
    """Validated records ``{"id": str, "text": str, "source": str, ...extra fields}`` of one file.

    ``source`` defaults to the file's name without its suffix. Raises InputError naming the file
    and line (JSONL) or row (Parquet) for records without ``id`` or ``text``, duplicate ids,
    invalid JSON or UTF-8, and files without records.
    """
    name = url.rstrip("/").rsplit("/", 1)[-1]
    suffix = _suffix(name)
    if suffix is None:
        raise InputError(f"{url}: not a corpus file; use .jsonl, .jsonl.gz or .parquet")
    unit, rows = ("row", _parquet_rows(url)) if suffix == ".parquet" else ("line", jsonl_rows(url))
    first_seen: dict[str, int] = {}
    for number, raw in rows:
        record = _document(raw, f"{url}, {unit} {number}", default_source=name[: -len(suffix)])
        first = first_seen.setdefault(record["id"], number)
        if first != number:
            raise InputError(
                f"{url}, {unit} {number}: duplicate document id {record['id']!r}, already used "
                f"on {unit} {first}; give every document in a file a unique id"
            )
        yield record
    if not first_seen:
        raise InputError(f"{url}: the file has no records; add documents or remove the file")


def jsonl_rows(url: str) -> Iterator[tuple[int, Any]]:
    """(line number, parsed JSON) of a .jsonl or .jsonl.gz file; blank lines are skipped."""
    fs, path = open_fs(url)
    with fs.open(path, "rb") as raw:
        stream = gzip.GzipFile(fileobj=raw) if url.endswith(".gz") else raw
        try:
            for number, line in enumerate(stream, start=1):
                try:  # utf-8-sig on line 1 drops the byte-order mark some editors write
                    text = line.decode("utf-8-sig" if number == 1 else "utf-8")
                except UnicodeDecodeError as exc:
                    raise InputError(
                        f"{url}, line {number}: not valid UTF-8 (byte {exc.start + 1} of the "
                        "line); re-save the file as UTF-8"
                    ) from None
                if not text.strip():
                    continue
                try:
                    record = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise InputError(
                        f"{url}, line {number}: not valid JSON ({exc.msg} at column {exc.colno}); "
                        "each line must hold exactly one JSON object"
                    ) from None
                yield number, record
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
            raise InputError(
                f"{url}: not a complete gzip file ({exc}); re-compress it with gzip"
            ) from None


def _parquet_rows(url: str) -> Iterator[tuple[int, Any]]:
    fs, path = open_fs(url)
    with fs.open(path, "rb") as raw:
        try:
            batches = pq.ParquetFile(raw).iter_batches(batch_size=1024)
            rows = itertools.chain.from_iterable(batch.to_pylist() for batch in batches)
            yield from enumerate(rows, start=1)
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(f"{url}: not a readable Parquet file ({exc})") from None


def _document(raw: Any, where: str, default_source: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise InputError(
            f'{where}: expected an object like {{"id": ..., "text": ...}}, got {type(raw).__name__}'
        )
    doc_id = raw.get("id")
    if isinstance(doc_id, bool) or not isinstance(doc_id, (str, int)) or doc_id == "":
        raise InputError(
            f"{where}: the record has no `id` (a non-empty string or integer); give every "
            "document a unique id"
        )
    text = raw.get("text")
    if not isinstance(text, str):
        found = "no `text` field" if text is None else f"a `text` of type {type(text).__name__}"
        raise InputError(f"{where}: document {doc_id!r} has {found}; `text` must be a string")
    source = raw.get("source")
    if source is not None and not isinstance(source, str):
        raise InputError(f"{where}: document {doc_id!r} has a non-string `source`: {source!r}")
    return {**raw, "id": str(doc_id), "source": source or default_source}


def special_prefix(tokenizer: Any) -> list[int]:
    """The ids the tokenizer puts before every text (its BOS, if it adds one), found by probing."""
    plain = tokenizer("pretrace", add_special_tokens=False)["input_ids"]
    full = tokenizer("pretrace")["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return list(full[:start])
    return []


def tokenize_documents(
    records: Iterable[dict[str, Any]],
    tokenizer: Any,
    max_length: int,
    *,
    origin: str = "corpus",
    batch_size: int = 256,
) -> pa.Table:
    """Tokenize records into a :data:`SHARD_SCHEMA` table, splitting long documents into chunks.

    A document of more than ``max_length`` tokens (counting the BOS the tokenizer adds, which
    starts every chunk) becomes consecutive chunks ``f"{id}#{k}"`` whose ``text`` spans
    concatenate to the document's text, so scores trace back to exact excerpts. Chunks of fewer
    than 2 tokens are dropped: they have no next token to predict. ``origin`` (the file) names
    the culprit in errors. Needs a fast tokenizer, for character offsets.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise InputError(
            f"tokenizer {type(tokenizer).__name__} is not a fast (Rust) tokenizer; pretrace needs "
            "one for character offsets: save the model with a tokenizer.json"
        )
    prefix = special_prefix(tokenizer)
    body = max_length - len(prefix)
    if body < 1:
        raise InputError(f"max_length={max_length} leaves no room for text after {prefix}")
    columns: dict[str, list] = {name: [] for name in SHARD_SCHEMA.names}
    pending = iter(records)
    for batch in iter(lambda: list(itertools.islice(pending, batch_size)), []):
        encoded = tokenizer(
            [r["text"] for r in batch],
            add_special_tokens=False,
            return_offsets_mapping=True,
            return_attention_mask=False,
            verbose=False,
        )
        for record, ids, offsets in zip(batch, encoded["input_ids"], encoded["offset_mapping"]):
            _append_chunks(columns, record, ids, offsets, prefix, body)
    _check_unique(columns["doc_id"], columns["parent_id"], origin, max_length)
    return pa.table(columns, schema=SHARD_SCHEMA)


def _append_chunks(
    columns: dict[str, list],
    record: dict[str, Any],
    ids: list[int],
    offsets: list[tuple[int, int]],
    prefix: list[int],
    body: int,
) -> None:
    text = record["text"]
    starts = range(0, max(len(ids), 1), body)
    # Cut the text where each chunk's first token starts; monotone even if offsets are not.
    cuts = list(itertools.accumulate([0, *(offsets[s][0] for s in starts[1:]), len(text)], max))
    meta = json.dumps(
        {k: v for k, v in record.items() if k not in _RESERVED}, ensure_ascii=False, default=str
    )
    for k, start in enumerate(starts):
        tokens = prefix + ids[start : start + body]
        if len(tokens) < 2:
            continue
        columns["doc_id"].append(record["id"] if len(starts) == 1 else f"{record['id']}#{k}")
        columns["parent_id"].append(record["id"])
        columns["chunk"].append(k)
        columns["source"].append(record["source"])
        columns["n_tokens"].append(len(tokens))
        columns["input_ids"].append(tokens)
        columns["text"].append(text[cuts[k] : cuts[k + 1]])
        columns["meta"].append(meta)


def _check_unique(doc_ids: list[str], parent_ids: list[str], origin: str, max_length: int) -> None:
    """A chunk id ``a#1`` can clash with a real document id ``a#1``; scores need unique ids."""
    parent_of: dict[str, str] = {}
    for doc_id, parent in zip(doc_ids, parent_ids):
        if doc_id in parent_of:
            raise InputError(
                f"{origin}: document id {doc_id!r} is used twice (by documents "
                f"{parent_of[doc_id]!r} and {parent!r}; documents over max_length={max_length} "
                "tokens are split into chunks '<id>#<k>'); rename one of them"
            )
        parent_of[doc_id] = parent
