"""Corpus: listing, partition keys, the three file formats, bad input, tokenization and chunking."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pretrace.demo.files import write_records
from pretrace.errors import InputError
from pretrace.inputs.corpus import (
    SHARD_SCHEMA,
    list_corpus_files,
    read_records,
    shard_key,
    tokenize_documents,
)
from pretrace.store.fingerprint import DigestCache
from pretrace.store.storage import Storage
from pretrace.testing.tiny import tiny_tokenizer

RECORDS = [
    {"id": "d1", "text": "The capital of France is Paris.", "source": "wiki", "lang": "en"},
    {"id": "d2", "text": "Rivers flow into the sea.\nThe sea is salty.", "source": None, "lang": "en"},
    {"id": "d3", "text": "Ünïcödé text: (7 - 4) * 8 = 24", "source": "math", "lang": "de"},
]


def write_corpus_file(path: Path, records: list[dict]) -> Path:
    """write_records, creating the folder first (tests write into fresh subfolders)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_records(path, records)


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


# -- listing and partition keys ---------------------------------------------------------------


def test_list_corpus_files_keeps_only_corpus_files(tmp_path: Path) -> None:
    for name in ("b.jsonl", "a.parquet", "c.jsonl.gz"):
        write_corpus_file(tmp_path / name, RECORDS)
    for name in (".hidden.jsonl", "sub/d.jsonl"):
        write_corpus_file(tmp_path / name, RECORDS)
    (tmp_path / "notes.txt").write_text("not a corpus file")
    files = list_corpus_files(str(tmp_path)).files
    assert [f.name for f in files] == ["a.parquet", "b.jsonl", "c.jsonl.gz"]
    assert files[1].url == str(tmp_path / "b.jsonl")
    assert files[1].size == (tmp_path / "b.jsonl").stat().st_size


def test_a_file_is_fingerprinted_by_its_content(tmp_path: Path) -> None:
    path = write_corpus_file(tmp_path / "a.jsonl", RECORDS)
    cache = DigestCache(tmp_path / "cache")
    before = list_corpus_files(str(tmp_path)).files[0].fingerprint(cache)
    assert before == f"sha256:{hashlib.sha256(path.read_bytes()).hexdigest()}"
    stat = path.stat()
    write_corpus_file(path, RECORDS[:1])
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # rewritten, modification time kept
    assert list_corpus_files(str(tmp_path)).files[0].fingerprint(cache) != before


def test_missing_corpus_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=re.escape(str(tmp_path / "nope"))):
        list_corpus_files(str(tmp_path / "nope"))


def test_unreachable_corpus_bucket(unreachable_s3: str) -> None:
    with pytest.raises(InputError, match="cannot read the corpus folder s3://bucket/corpus"):
        list_corpus_files("s3://bucket/corpus")


@pytest.mark.integration
def test_corpus_on_s3(s3_root: str, tmp_path: Path) -> None:
    storage = Storage(s3_root)
    local = write_corpus_file(tmp_path / "docs.jsonl", RECORDS)
    storage.write_bytes("corpus/docs.jsonl", local.read_bytes())
    storage.write_bytes("corpus/skip.txt", b"")
    files = list_corpus_files(f"{s3_root}/corpus/").files
    assert [(f.name, f.url) for f in files] == [("docs.jsonl", f"{s3_root}/corpus/docs.jsonl")]
    assert files[0].fingerprint(DigestCache(tmp_path / "cache")).startswith("etag:")
    assert list(read_records(files[0].url)) == list(read_records(str(local)))


TRICKY_NAMES = [
    "shard-00001.jsonl.gz",
    "a,b.jsonl",
    "a|b.jsonl",
    "a b.jsonl",
    "a-b.jsonl",
    "A-b.jsonl",
    "a...b.jsonl",
    "a..b.jsonl",
    "a.b.jsonl",
    "é.jsonl",
    "e.jsonl",
    "É.jsonl",
    "数据.parquet",
    "データ.parquet",
    ".jsonl",
    "-x-.jsonl",
    "x" * 200 + "1.jsonl",
    "x" * 200 + "2.jsonl",
    "[1].jsonl",
    "tab\there.jsonl",
    "new\nline.jsonl",
]


def test_shard_keys_are_safe_unique_and_stable() -> None:
    keys = [shard_key(name) for name in TRICKY_NAMES]
    for key in keys:
        assert re.fullmatch(r"[a-z0-9][a-z0-9._-]*", key), key
        assert "..." not in key and len(key) <= 64
    assert len(set(keys)) == len(keys)
    assert keys == [shard_key(name) for name in TRICKY_NAMES]
    assert shard_key("shard-00001.jsonl.gz") == "shard-00001.jsonl.gz"  # clean names are kept
    assert shard_key("a,b.jsonl").startswith("a-b.jsonl-")  # others stay readable


# -- reading records --------------------------------------------------------------------------


def test_three_formats_read_identically(tmp_path: Path) -> None:
    paths = [write_corpus_file(tmp_path / fmt / f"docs{fmt}", RECORDS) for fmt in (".jsonl", ".jsonl.gz", ".parquet")]
    read = [list(read_records(str(p))) for p in paths]
    assert read[0] == read[1] == read[2]
    assert [r["source"] for r in read[0]] == ["wiki", "docs", "math"]  # default: the file's stem
    assert read[0][2] == {**RECORDS[2], "id": "d3"}


def test_integer_ids_become_strings_and_blank_lines_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"id": 7, "text": "a"}\n\n{"id": "8", "text": "b"}\n')
    assert [r["id"] for r in read_records(str(path))] == ["7", "8"]


BAD_JSONL = {
    "no text": ([{"id": "a", "text": "x"}, {"id": "b"}], r"line 2: .*no `text`"),
    "non-string text": ([{"id": "a", "text": ["x"]}], r"line 1: .*`text` of type list"),
    "no id": ([{"id": "a", "text": "x"}, {"text": "y"}], r"line 2: .*no `id`"),
    "null id": ([{"id": None, "text": "y"}], r"line 1: .*no `id`"),
    "not an object": ([{"id": "a", "text": "x"}, ["a"]], r"line 2: expected an object"),
    "duplicate id": (
        [{"id": "a", "text": "x"}, {"id": "b", "text": "y"}, {"id": "a", "text": "z"}],
        r"line 3: duplicate document id 'a', already used on line 1",
    ),
}


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
@pytest.mark.parametrize("case", BAD_JSONL)
def test_bad_records_name_file_and_line(tmp_path: Path, case: str, suffix: str) -> None:
    lines, pattern = BAD_JSONL[case]
    path = write_corpus_file(tmp_path / f"bad{suffix}", lines)
    with pytest.raises(InputError, match=re.escape(str(path)) + ", " + pattern):
        list(read_records(str(path)))


@pytest.mark.parametrize(
    "content, pattern",
    [
        (b'{"id": "a", "text": "x"}\n{"id": "b", "text": "y"\n', r"line 2: not valid JSON"),
        (b'{"id": "a", "text": "x"}\n{"id": "b", "text": "\xff"}\n', r"line 2: not valid UTF-8"),
        (b"", r"no records"),
        (b"\n  \n", r"no records"),
        (
            b'{"id": "a", "text": "x"}\n{"id": "b", "text": "y", "meta": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n",
            r"line 2: JSON nested too deeply to read; flatten the record",
        ),
        (b'{"id": "a", "text": "x", "n": ' + b"7" * 5000 + b"}\n", r"line 1: Exceeds the limit .* as a string"),
    ],
    ids=["json", "utf8", "empty", "blank", "deep", "huge-integer"],
)
def test_unreadable_lines_name_file_and_line(tmp_path: Path, content: bytes, pattern: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(InputError, match=re.escape(str(path)) + ".*" + pattern):
        list(read_records(str(path)))


def test_bad_parquet_rows_name_file_and_row(tmp_path: Path) -> None:
    path = write_corpus_file(tmp_path / "bad.parquet", [{"id": "a", "text": "x"}, {"id": "b", "text": None}])
    with pytest.raises(InputError, match=re.escape(str(path)) + r", row 2: .*no `text`"):
        list(read_records(str(path)))
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"id": pa.array([], pa.string()), "text": pa.array([], pa.string())}), empty)
    with pytest.raises(InputError, match=re.escape(str(empty)) + ": the file has no records"):
        list(read_records(str(empty)))


def test_corrupt_gzip(tmp_path: Path) -> None:
    path = write_corpus_file(tmp_path / "bad.jsonl.gz", RECORDS)
    path.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(InputError, match=re.escape(str(path)) + ": not a complete gzip file"):
        list(read_records(str(path)))


# -- tokenization -----------------------------------------------------------------------------


def test_short_documents_keep_their_ids(tokenizer) -> None:
    records = [
        {"id": "a", "text": "The sea.", "source": "s", "url": "u"},
        {"id": "empty", "text": "", "source": "s"},
    ]  # BOS alone: nothing to predict
    table = tokenize_documents(records, tokenizer, max_length=64)
    assert table.schema == SHARD_SCHEMA
    (row,) = table.to_pylist()
    expected_ids = tokenizer("The sea.")["input_ids"]
    assert row == {
        "doc_id": "a",
        "parent_id": "a",
        "chunk": 0,
        "source": "s",
        "n_tokens": len(expected_ids),
        "input_ids": expected_ids,
        "text": "The sea.",
        "meta": '{"url": "u"}',
    }


def test_long_document_is_split_into_traceable_chunks(tokenizer) -> None:
    text = " ".join(f"Rivers flow {i} times into the sea, ünïcödé." for i in range(40))
    records = [{"id": "long", "text": text, "source": "s"}, {"id": "b", "text": "Paris.", "source": "s"}]
    table = tokenize_documents(iter(records), tokenizer, max_length=16, batch_size=1)
    rows = [r for r in table.to_pylist() if r["parent_id"] == "long"]
    bos = tokenizer.bos_token_id
    body = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(rows) == -(-len(body) // 15) > 2
    assert [r["doc_id"] for r in rows] == [f"long#{k}" for k in range(len(rows))]
    assert [r["chunk"] for r in rows] == list(range(len(rows)))
    assert all(r["input_ids"][0] == bos and r["n_tokens"] == len(r["input_ids"]) <= 16 for r in rows)
    assert [t for r in rows for t in r["input_ids"][1:]] == body
    assert "".join(r["text"] for r in rows) == text
    assert table.column("doc_id").to_pylist()[-1] == "b"


def test_chunk_ids_must_not_clash_with_document_ids(tokenizer) -> None:
    records = [
        {"id": "a", "text": "The sea is salty. " * 10, "source": "s"},
        {"id": "a#1", "text": "Paris.", "source": "s"},
    ]
    with pytest.raises(InputError, match=r"f\.jsonl: document id 'a#1' is used twice"):
        tokenize_documents(records, tokenizer, max_length=8, origin="f.jsonl")


# -- every file accounted for, every document too ---------------------------------------------


def test_every_entry_of_the_corpus_folder_is_read_or_listed_as_skipped(tmp_path: Path) -> None:
    (tmp_path / "corpus").mkdir()
    for written, name in (("a.jsonl", "a.JSONL"), ("b.jsonl", "b.ndjson"), ("c.jsonl.gz", "c.ndjson.gz")):
        write_corpus_file(tmp_path / written, RECORDS).rename(tmp_path / "corpus" / name)
    write_corpus_file(tmp_path / "target.jsonl", RECORDS)
    (tmp_path / "corpus" / "linked.jsonl").symlink_to(tmp_path / "target.jsonl")
    (tmp_path / "corpus" / "dangling.jsonl").symlink_to(tmp_path / "nowhere.jsonl")
    for name in ("old.json", "dump.jsonl.bz2"):
        (tmp_path / "corpus" / name).write_text("{}")
    (tmp_path / "corpus" / "nested").mkdir()
    (tmp_path / "corpus" / ".hidden.jsonl").write_text("{}")
    listing = list_corpus_files(str(tmp_path / "corpus"))
    assert [f.name for f in listing.files] == ["a.JSONL", "b.ndjson", "c.ndjson.gz", "linked.jsonl"]
    assert [entry.split(":")[0] for entry in listing.skipped] == [
        "dangling.jsonl",
        "dump.jsonl.bz2",
        "nested",
        "old.json",
    ]
    assert "symbolic link" in listing.skipped[0] and "convert it to .jsonl" in listing.skipped[1]
    for file in listing.files:
        assert [r["id"] for r in read_records(file.url)] == ["d1", "d2", "d3"], file.name
    assert listing.files[3].size == (tmp_path / "target.jsonl").stat().st_size


@pytest.mark.parametrize(
    "record, message",
    [
        ({"id": 1.5, "text": "x"}, r"line 1: the `id` is a float \(1.5\); ids must be strings or integers"),
        ({"id": None, "text": "x"}, r"line 1: the record has no `id`"),
        ({"id": "a", "text": "bad \ud800 text"}, r"line 1: `text` holds an unpaired surrogate escape"),
        ({"id": "a", "text": "ok", "title": ["x\udfff"]}, r"line 1: `title` holds an unpaired surrogate escape"),
    ],
)
def test_records_with_unusable_fields_name_the_line_and_the_fix(tmp_path: Path, record, message) -> None:
    path = tmp_path / "f.jsonl"
    path.write_text(__import__("json").dumps(record) + "\n")  # json escapes the surrogate as \ud800
    with pytest.raises(InputError, match=re.escape(str(path)) + ", " + message):
        list(read_records(str(path)))


def test_a_file_without_any_text_is_an_error_and_empty_documents_are_left_out(tokenizer) -> None:
    empty = [{"id": "a", "text": "", "source": "s"}, {"id": "b", "text": "", "source": "s"}]
    with pytest.raises(InputError, match=r"f\.jsonl: none of its 2 documents has text to score"):
        tokenize_documents(empty, tokenizer, max_length=16, origin="f.jsonl")
    table = tokenize_documents([*empty, {"id": "c", "text": "Paris.", "source": "s"}], tokenizer, max_length=16)
    assert table.column("doc_id").to_pylist() == ["c"]


@pytest.mark.parametrize(
    "text",
    [
        "The sea is salty. " * 300,
        "x = 24;\n\n   indented   spaces\t\ttabs ünïcödé (7 - 4) * 8 = 24\n" * 120,
        "nospaceatall" * 400 + " then words " * 50,
    ],
)
def test_long_documents_tokenized_by_segments_equal_whole_documents(tokenizer, monkeypatch, text) -> None:
    import pretrace.inputs.corpus as corpus

    record = {"id": "long", "text": text, "source": "s"}
    whole = tokenize_documents([record], tokenizer, max_length=64)
    monkeypatch.setattr(corpus, "SEGMENT_CHARS", 97)
    ids, starts = corpus.segment_tokens(tokenizer, text)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    assert ids.tolist() == encoded["input_ids"]
    assert starts.tolist() == [o[0] for o in encoded["offset_mapping"]]
    assert tokenize_documents([record], tokenizer, max_length=64).equals(whole)
