"""The user's corpus: listing its files, naming their partitions, reading and tokenizing records.

A corpus is a folder (or S3 prefix) of ``.jsonl``, ``.jsonl.gz`` or ``.parquet`` files of
Dolma-style records ``{"id", "text", "source", ...}``; each file becomes one shard partition.
``.ndjson`` (``.ndjson.gz``) is the same format under another name and is read too; suffixes
match in any case (``.JSONL``). Symbolic links to files are followed. Every other entry of the
folder except hidden files is listed as skipped, with the reason, so nothing is left out
silently. Bad input fails here, with the file and line, before any model work starts.
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

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from pretrace.errors import InputError
from pretrace.store.fingerprint import DigestCache, file_fingerprint
from pretrace.store.storage import open_fs

CORPUS_SUFFIXES = (".jsonl.gz", ".ndjson.gz", ".jsonl", ".ndjson", ".parquet")

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
        """Changes exactly when the file's content does (`pretrace.store.fingerprint`)."""
        if self.etag is None:
            return file_fingerprint(self.url, {}, cache)
        return file_fingerprint(None, {"ETag": self.etag, "size": self.size, "name": self.url}, cache)


@dataclass(frozen=True)
class CorpusListing:
    """The corpus files of a folder, and every other entry with why it is not read."""

    files: list[CorpusFile]
    skipped: list[str]  # "<name>: <reason and fix>"


def _suffix(name: str) -> str | None:
    lower = name.lower()
    return next((s for s in CORPUS_SUFFIXES if lower.endswith(s)), None)


def _skip_reason(entry: dict[str, Any], name: str, fs: Any) -> str | None:
    """Why a folder entry is not a corpus file (None if it is one)."""
    if entry["type"] == "directory":
        return "a folder; corpus files must lie directly in the corpus folder"
    if entry.get("islink") and not fs.isfile(entry["name"]):
        return f"a symbolic link to {entry.get('destination')}, which is not a file"
    if _suffix(name) is None:
        return (
            "not a corpus file; convert it to .jsonl (one JSON object per line), .jsonl.gz or "
            ".parquet, or move it out of the corpus folder"
        )
    return None


def list_corpus_files(root_url: str) -> CorpusListing:
    """The corpus files directly inside ``root_url``, sorted by name, and the skipped entries."""
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
    files, skipped = [], []
    for entry in fs.ls(path, detail=True):
        name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
        if name.startswith("."):
            continue
        reason = _skip_reason(entry, name, fs)
        if reason:
            skipped.append(f"{name}: {reason}")
            continue
        files.append(
            CorpusFile(
                name=name,
                url=entry["name"] if local else fs.unstrip_protocol(entry["name"]),
                size=int(fs.size(entry["name"]) if entry.get("islink") else entry["size"]),
                etag=None if local else str(entry["ETag"]).strip('"'),
            )
        )
    return CorpusListing(sorted(files, key=lambda f: f.name), sorted(skipped))


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
        raise InputError(f"{url}: not a corpus file; use .jsonl, .jsonl.gz, .ndjson or .parquet")
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
    try:
        opened = fs.open(path, "rb")
    except FileNotFoundError:
        raise InputError(f"{url}: no such file; correct the path in pretrace.yaml or create the file") from None
    with opened as raw:
        stream = gzip.GzipFile(fileobj=raw) if url.lower().endswith(".gz") else raw
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
                except RecursionError:
                    raise InputError(
                        f"{url}, line {number}: JSON nested too deeply to read; flatten the record"
                    ) from None
                except ValueError as exc:  # an integer of more digits than Python converts
                    raise InputError(f"{url}, line {number}: {exc}; store such a number as a string") from None
                yield number, record
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
            raise InputError(f"{url}: not a complete gzip file ({exc}); re-compress it with gzip") from None


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
        raise InputError(f'{where}: expected an object like {{"id": ..., "text": ...}}, got {type(raw).__name__}')
    doc_id = raw.get("id")
    if doc_id is None or doc_id == "":
        raise InputError(f"{where}: the record has no `id`; give every document a unique id (a string or integer)")
    if isinstance(doc_id, bool) or not isinstance(doc_id, (str, int)):
        raise InputError(
            f"{where}: the `id` is a {type(doc_id).__name__} ({json.dumps(doc_id)[:40]}); ids must be strings or "
            "integers: quote it (or cast the Parquet column to string)"
        )
    text = raw.get("text")
    if not isinstance(text, str):
        found = "no `text` field" if text is None else f"a `text` of type {type(text).__name__}"
        raise InputError(f"{where}: document {doc_id!r} has {found}; `text` must be a string")
    source = raw.get("source")
    if source is not None and not isinstance(source, str):
        raise InputError(f"{where}: document {doc_id!r} has a non-string `source`: {source!r}")
    check_unicode(raw, where)
    return {**raw, "id": str(doc_id), "source": source or default_source}


_SURROGATE = re.compile("[\ud800-\udfff]")


def check_unicode(record: dict[str, Any], where: str) -> None:
    """JSON's \\ud800 escapes decode to lone surrogates, which are not text: no tokenizer or
    Parquet file takes them. Name the field instead of failing deep inside."""
    for key, value in record.items():
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        found = _SURROGATE.search(text)
        if found:
            raise InputError(
                f"{where}: `{key}` holds an unpaired surrogate escape ({found.group()!r}), which "
                "is not text; write the character itself or a complete surrogate pair"
            )


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
    than 2 tokens are dropped: they have no next token to predict (an empty document has none).
    A file none of whose documents has a chunk left is an error. Documents longer than
    `SEGMENT_CHARS` are tokenized a segment at a time (`segment_tokens`), so memory follows the
    segment, not the document. ``origin`` (the file) names the culprit in errors. Needs a fast
    tokenizer, for character offsets.
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
    read = 0
    for batch in iter(lambda: list(itertools.islice(pending, batch_size)), []):
        read += len(batch)
        encoded = iter(_encode(tokenizer, [r["text"] for r in batch if len(r["text"]) <= SEGMENT_CHARS]))
        for record in batch:
            long = len(record["text"]) > SEGMENT_CHARS
            ids, starts = segment_tokens(tokenizer, record["text"]) if long else next(encoded)
            _append_chunks(columns, record, ids, starts, prefix, body)
    _check_unique(columns["doc_id"], columns["parent_id"], origin, max_length)
    if read and not columns["doc_id"]:
        raise InputError(
            f"{origin}: none of its {read} documents has text to score (each is empty or shorter than 2 "
            "tokens); add text or remove the file"
        )
    return pa.table(columns, schema=SHARD_SCHEMA)


SEGMENT_CHARS = 100_000
"""Documents longer than this many characters are tokenized a segment at a time."""
_PROBE_CHARS = 200
_WHITESPACE_AFTER_TEXT = re.compile(r"(?<=\S)\s")


def _encode(tokenizer: Any, texts: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(token ids, start character of each token) of each text, without special tokens."""
    if not texts:
        return []
    encoded = tokenizer(
        texts, add_special_tokens=False, return_offsets_mapping=True, return_attention_mask=False, verbose=False
    )
    return [
        (np.asarray(ids, dtype=np.int32).reshape(-1), np.asarray([o[0] for o in offsets], dtype=np.int64))
        for ids, offsets in zip(encoded["input_ids"], encoded["offset_mapping"])
    ]


def segment_tokens(tokenizer: Any, text: str) -> tuple[np.ndarray, np.ndarray]:
    """`_encode` of one long text, a segment of about `SEGMENT_CHARS` at a time.

    A segment ends just before a run of whitespace, and only where tokenizing the text around
    the cut in two pieces gives the same ids as in one (checked on a few hundred characters
    each side), so the ids equal those of the whole text for any tokenizer whose merges do not
    reach further than that; where no such cut is found, the segment grows.
    """
    ids, starts, begin = [], [], 0
    while begin < len(text):
        end = _cut(tokenizer, text, begin + SEGMENT_CHARS)
        ((piece_ids, piece_starts),) = _encode(tokenizer, [text[begin:end]])
        ids.append(piece_ids)
        starts.append(piece_starts + begin)
        begin = end
    return np.concatenate(ids), np.concatenate(starts)


def _cut(tokenizer: Any, text: str, near: int) -> int:
    """The first safe place to cut ``text`` at or after ``near`` (its end if none)."""
    for match in _WHITESPACE_AFTER_TEXT.finditer(text, near):
        cut = match.start()
        window = text[max(0, cut - _PROBE_CHARS) : cut + _PROBE_CHARS]
        split = cut - max(0, cut - _PROBE_CHARS)
        whole, left, right = _encode(tokenizer, [window, window[:split], window[split:]])
        if np.array_equal(whole[0], np.concatenate([left[0], right[0]])):
            return cut
    return len(text)


def _append_chunks(
    columns: dict[str, list],
    record: dict[str, Any],
    ids: np.ndarray,
    token_starts: np.ndarray,
    prefix: list[int],
    body: int,
) -> None:
    text = record["text"]
    starts = range(0, max(len(ids), 1), body)
    # Cut the text where each chunk's first token starts; monotone even if offsets are not.
    cuts = list(itertools.accumulate([0, *(int(token_starts[s]) for s in starts[1:]), len(text)], max))
    meta = json.dumps({k: v for k, v in record.items() if k not in _RESERVED}, ensure_ascii=False, default=str)
    for k, start in enumerate(starts):
        tokens = prefix + ids[start : start + body].tolist()
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
