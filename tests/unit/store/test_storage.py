"""Storage: round trips on local disk and on S3 (moto), atomic writes, unusable roots."""

from __future__ import annotations

import os
import time

import polars as pl
import pyarrow as pa
import pytest
import torch

from pretrace.errors import InputError
from pretrace.store.storage import Storage, open_fs


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.integration)])
def storage(request: pytest.FixtureRequest, tmp_path) -> Storage:
    if request.param == "local":
        return Storage(str(tmp_path / "data"))
    return Storage(request.getfixturevalue("s3_root"))


def test_bytes_and_json_round_trip(storage: Storage) -> None:
    storage.write_bytes("a/b/blob.bin", b"\x00\xffpretrace")
    storage.write_json("a/meta.json", {"shard": "é", "n": [1, 2]})
    assert storage.read_bytes("a/b/blob.bin") == b"\x00\xffpretrace"
    assert storage.read_json("a/meta.json") == {"shard": "é", "n": [1, 2]}
    assert storage.exists("a/meta.json") and not storage.exists("a/missing.json")
    assert storage.list("a") == ["a/b/blob.bin", "a/meta.json"]
    assert storage.list("nothing-here") == []
    storage.delete("a/meta.json")
    storage.delete("a/meta.json")  # deleting twice is fine
    assert storage.list("") == ["a/b/blob.bin"]


def test_parquet_round_trip_and_column_read(storage: Storage) -> None:
    table = pa.table({"doc_id": ["x", "y"], "n_tokens": pa.array([3, 4], pa.int32())})
    storage.write_parquet("shards/s.parquet", table)
    assert storage.read_parquet("shards/s.parquet").equals(table)
    assert storage.read_parquet("shards/s.parquet", columns=["n_tokens"]).column_names == ["n_tokens"]
    storage.write_parquet("shards/p.parquet", pl.DataFrame({"a": [1.5]}))
    assert storage.read_parquet("shards/p.parquet").to_pydict() == {"a": [1.5]}


def test_tensor_round_trip_with_metadata(storage: Storage) -> None:
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    tensors = {  # a transpose, tied and overlapping views, another dtype
        "t": base.T,
        "w": base,
        "tied": base,
        "row": base[1],
        "half": torch.ones(2, dtype=torch.bfloat16),
    }
    storage.write_tensors("f/x.safetensors", tensors, {"kind": "covariance", "tokens": "12"})
    loaded, metadata = storage.read_tensors("f/x.safetensors")
    assert metadata == {"kind": "covariance", "tokens": "12"}
    assert loaded.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert torch.equal(loaded[name], tensor) and loaded[name].dtype == tensor.dtype


def test_url_local_path_and_download(storage: Storage, tmp_path) -> None:
    storage.write_bytes("model/config.json", b"{}")
    storage.write_bytes("model/sub/weights.bin", b"w")
    assert storage.url("model", "config.json") == f"{storage.root}/model/config.json"
    local = storage.local_path("model/config.json")
    assert (local is None) == storage.root.startswith("s3://")
    dest = storage.download_dir("model", tmp_path / "copy")
    assert (dest / "config.json").read_bytes() == b"{}"
    assert (dest / "sub" / "weights.bin").read_bytes() == b"w"


def test_keys_cannot_escape_the_root(tmp_path) -> None:
    storage = Storage(str(tmp_path))
    for key in ("../x", "/etc/passwd", "a//b", "a/./b"):
        with pytest.raises(ValueError):
            storage.write_bytes(key, b"")


def test_failed_write_keeps_old_content_and_leaves_no_temp_file(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = pa.table({"v": [1]})
    storage.write_parquet("t.parquet", old)

    def half_write_then_fail(table: pa.Table, where: str) -> None:
        with open(where, "wb") as f:
            f.write(b"PAR1 truncated")
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr("pretrace.store.storage.pq.write_table", half_write_then_fail)
    with pytest.raises(RuntimeError, match="killed"):
        storage.write_parquet("t.parquet", pa.table({"v": [2]}))
    monkeypatch.undo()
    assert storage.read_parquet("t.parquet").equals(old)
    assert storage.list("") == ["t.parquet"]
    if (path := storage.local_path("t.parquet")) is not None:
        assert os.listdir(path.parent) == ["t.parquet"]


def test_check_writable_accepts_a_good_root(storage: Storage) -> None:
    storage.check_writable()
    assert storage.list("") == []


def test_unwritable_local_root_names_the_root(tmp_path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    root = str(blocker / "data")
    with pytest.raises(InputError, match="not writable") as info:
        Storage(root).check_writable()
    assert root in str(info.value)


@pytest.mark.integration
def test_missing_bucket_names_the_root(s3_server: str) -> None:
    with pytest.raises(InputError, match="s3://no-such-bucket/x"):
        Storage("s3://no-such-bucket/x").check_writable()


def test_unreachable_endpoint_fails_fast(unreachable_s3: str) -> None:
    start = time.monotonic()
    with pytest.raises(InputError, match="s3://bucket/prefix") as info:
        Storage("s3://bucket/prefix").check_writable()
    assert time.monotonic() - start < 10
    assert "AWS_ENDPOINT_URL" in str(info.value)


def test_open_fs_rejects_unknown_schemes() -> None:
    with pytest.raises(InputError, match="unsupported URL scheme"):
        open_fs("ftp://host/corpus")


def test_leftovers_are_another_hosts_old_temporaries_and_one_renamed_while_looked_at_is_skipped(tmp_path) -> None:
    from pretrace.store.storage import STALE_TEMPORARY_S, _is_leftover

    name = ".pretrace-tmp.otherhost.12345.x.parquet"
    old, fresh = tmp_path / "old", tmp_path / "fresh"
    old.write_bytes(b"x")
    fresh.write_bytes(b"y")
    now = time.time()
    os.utime(old, (now - STALE_TEMPORARY_S - 60, now - STALE_TEMPORARY_S - 60))
    assert _is_leftover(name, ".pretrace-tmp.", str(old), now)
    assert not _is_leftover(name, ".pretrace-tmp.", str(fresh), now)
    # its writer renamed it between the listing and the look: not a leftover, and no error
    assert not _is_leftover(name, ".pretrace-tmp.", str(tmp_path / "renamed-away"), now)
    assert not _is_leftover("user-file.parquet", ".pretrace-tmp.", str(old), now)
