"""Content fingerprints: content decides, modification times do not; the cache never hides a change."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from pretrace.store import fingerprint
from pretrace.store.fingerprint import DigestCache, stored_digest, tree_fingerprint


@pytest.fixture
def hashed(monkeypatch) -> list[str]:
    """The paths actually read and hashed (a cache hit reads nothing)."""
    seen: list[str] = []
    original = fingerprint.sha256_file
    monkeypatch.setattr(fingerprint, "sha256_file", lambda path: seen.append(str(path)) or original(path))
    return seen


def test_digests_are_cached_until_the_file_is_written(tmp_path, hashed):
    path = tmp_path / "a.txt"
    path.write_bytes(b"one")
    cache = DigestCache(tmp_path / "cache")
    assert cache.digest(str(path)) == hashlib.sha256(b"one").hexdigest()
    cache.save()  # (also done every few seconds while hashing, and at exit)
    assert DigestCache(tmp_path / "cache").digest(str(path)) == hashlib.sha256(b"one").hexdigest()  # persisted
    assert len(hashed) == 1
    stat = path.stat()
    path.write_bytes(b"two")  # same size, and the old modification time put back
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert cache.digest(str(path)) == hashlib.sha256(b"two").hexdigest()
    assert len(hashed) == 2


def test_a_touched_file_is_hashed_again_but_keeps_its_fingerprint(tmp_path, hashed):
    path = tmp_path / "a.txt"
    path.write_bytes(b"same")
    cache = DigestCache(tmp_path / "cache")
    first = cache.digest(str(path))
    os.utime(path, ns=(0, 10**9))
    assert cache.digest(str(path)) == first and len(hashed) == 2


def test_an_unwritable_cache_only_costs_hashing_again(tmp_path):
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("x")
    path = tmp_path / "a.txt"
    path.write_bytes(b"data")
    assert DigestCache(blocked).digest(str(path)) == hashlib.sha256(b"data").hexdigest()


def test_a_checkpoint_fingerprint_covers_names_and_contents(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"weights")
    cache = DigestCache(tmp_path / "cache")
    first = tree_fingerprint(str(folder), cache)
    (folder / "model.safetensors").rename(folder / "other.safetensors")
    renamed = tree_fingerprint(str(folder), cache)
    (folder / "other.safetensors").write_bytes(b"weight2")
    assert len({first, renamed, tree_fingerprint(str(folder), cache)}) == 3
    with pytest.raises(FileNotFoundError):
        tree_fingerprint(str(tmp_path / "empty"), cache)


@pytest.mark.integration
def test_s3_objects_are_fingerprinted_by_etag(s3_root, tmp_path):
    from pretrace.store.storage import Storage

    store = Storage(s3_root)
    store.write_bytes("ckpt/config.json", b"{}")
    cache = DigestCache(tmp_path / "cache")
    first = tree_fingerprint(f"{s3_root}/ckpt", cache)
    store.write_bytes("ckpt/config.json", b"{}")  # rewritten, same bytes: same ETag
    assert tree_fingerprint(f"{s3_root}/ckpt", cache) == first
    store.write_bytes("ckpt/config.json", b'{"a": 1}')
    assert tree_fingerprint(f"{s3_root}/ckpt", cache) != first
    assert not Path(cache.path).exists()  # nothing was hashed locally


def test_a_kept_digest_is_trusted_only_by_a_persistent_cache(tmp_path):
    """`pretrace verify` takes every digest from the bytes: a kept entry gone wrong (here forged
    under the file's own stamp) fools the persistent cache, never a fresh one."""
    path = tmp_path / "a.txt"
    path.write_bytes(b"data")
    cache = DigestCache(tmp_path / "cache")
    cache.digest(str(path))
    cache.save()
    entries = json.loads(cache.path.read_text())
    entries[str(path)][1] = "0" * 64
    cache.path.write_text(json.dumps(entries))
    assert DigestCache(tmp_path / "cache").digest(str(path)) == "0" * 64
    fresh = DigestCache(tmp_path / "cache", persistent=False)
    assert fresh.digest(str(path)) == hashlib.sha256(b"data").hexdigest()
    fresh.save()
    assert json.loads(cache.path.read_text()) == entries  # a fresh cache writes nothing


@pytest.mark.integration
def test_a_stored_object_is_downloaded_again_only_when_its_etag_changes(s3_root, tmp_path, monkeypatch):
    from pretrace.store.storage import Storage

    fetched: list[str] = []
    original = Storage.sha256
    monkeypatch.setattr(Storage, "sha256", lambda self, key: fetched.append(key) or original(self, key))
    store = Storage(s3_root)
    store.write_bytes("artefact/x.bin", b"one")
    cache = DigestCache(tmp_path / "cache")

    def digest() -> str:
        return stored_digest(store, "artefact/x.bin", store.listing_details("artefact")["artefact/x.bin"], cache)

    assert digest() == digest() == hashlib.sha256(b"one").hexdigest()
    store.write_bytes("artefact/x.bin", b"two")
    assert digest() == hashlib.sha256(b"two").hexdigest()
    assert fetched == ["artefact/x.bin", "artefact/x.bin"]


def test_processes_share_what_each_hashed(tmp_path, hashed):
    """A cache that read the file before another process saved sees that process's digests on
    a miss (no second hash), and a save keeps what others saved meanwhile."""
    first, second = tmp_path / "first.bin", tmp_path / "second.bin"
    first.write_bytes(b"one")
    second.write_bytes(b"two")
    early, late = DigestCache(tmp_path / "cache"), DigestCache(tmp_path / "cache")
    early.digest(str(second))  # `early` has read the (empty) cache and hashed `second`
    late.digest(str(first))
    late.save()
    assert early.digest(str(first)) == hashlib.sha256(b"one").hexdigest()
    assert hashed == [str(second), str(first)]  # `first` was hashed once, by `late`
    early.save()
    assert set(json.loads(early.path.read_text())) == {str(first), str(second)}
