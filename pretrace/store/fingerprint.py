"""Content fingerprints of the user's inputs (corpus files, checkpoints, query files), and the
verified digests of stored artefact files.

A fingerprint changes exactly when content does. Modification times do not qualify: copy tools
keep them across content changes (``cp -p``, ``rsync -t``) and round them across copies of
unchanged files. Locally a fingerprint is the file's SHA-256; on S3 it is the object's ETag and
size, which S3 derives from the content.

Hashing a large corpus on every sensor tick would cost minutes, so local digests are cached
under ``$PRETRACE_CACHE_DIR`` (default ``~/.cache/pretrace``), keyed by the path and a stat
signature that any write changes: size, mtime, *ctime*, inode and device. ctime cannot be set
from user space (``utime`` itself bumps it), so a file rewritten with its old mtime restored is
still hashed again, while an untouched file never is.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

from pretrace.errors import InputError
from pretrace.store.storage import Storage, open_fs, sha256_file

CACHE_ENV = "PRETRACE_CACHE_DIR"
_SAVE_EVERY_S = 5.0


def cache_folder(folder: str | os.PathLike | None = None) -> Path:
    """pretrace's local cache: ``folder``, else $PRETRACE_CACHE_DIR, else ~/.cache/pretrace
    ($XDG_CACHE_HOME/pretrace)."""
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pretrace"
    return Path(folder or os.environ.get(CACHE_ENV) or default)


def private_folder(path: Path) -> Path:
    """``path`` created if need be, and private to the user.

    What the cache holds decides what is loaded and what counts as unchanged (checkpoint
    copies, file digests), so a folder another user owns is refused and one that others may
    write into is made private.
    """
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    stat = path.stat()
    if stat.st_uid != os.getuid():
        raise InputError(f"the cache folder {path} belongs to another user; set ${CACHE_ENV} to a folder of your own")
    if stat.st_mode & 0o077:
        path.chmod(0o700)
    return path


def _stat_signature(stat: os.stat_result) -> str:
    return f"{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ctime_ns}:{stat.st_ino}:{stat.st_dev}"


class DigestCache:
    """Path or URL -> (stamp, SHA-256) on local disk, shared by every process of the user.

    A stamp is what changes whenever the bytes do: a local file's stat signature, an object's
    ETag and size. A digest is taken from the bytes themselves, and trusted again only while the
    stamp it was taken under holds. Processes share the file: a miss first reads what others
    saved since, and a save merges this process's new digests into what is there (the file is
    replaced atomically; two processes racing lose an entry at worst, which only costs hashing
    that file again). ``persistent=False`` starts empty and saves nothing: every digest is taken
    from the bytes (`pretrace verify`).
    """

    def __init__(self, folder: str | os.PathLike | None = None, *, persistent: bool = True) -> None:
        self.path = cache_folder(folder) / "digests.json"
        self._entries: dict[str, list[str]] | None = None if persistent else {}
        self._persistent = persistent
        self._read_version: int | None = None
        self._new: set[str] = set()
        self._saved = time.monotonic()
        self._dirty = False

    def _load(self) -> dict[str, list[str]]:
        if self._entries is None:
            self._entries = self._read() or {}
        return self._entries

    def _read(self) -> dict[str, list[str]] | None:
        """The saved digests, if the file changed since this process last read it."""
        try:
            private_folder(self.path.parent)
            version = self.path.stat().st_mtime_ns
            if version == self._read_version:
                return None
            saved = json.loads(self.path.read_text())
        except (OSError, ValueError):  # InputError included: a cache not ours is not read
            return None
        self._read_version = version
        return saved if isinstance(saved, dict) else None

    def _known(self, key: str, stamp: str) -> str | None:
        """The kept digest of ``key`` under ``stamp``, looking at what other processes saved
        since when this process has none."""
        entries = self._load()
        known = entries.get(key)
        if not (known and known[0] == stamp) and self._persistent:
            saved = self._read()
            if saved is not None:
                entries.update({k: v for k, v in saved.items() if k not in self._new})
                known = entries.get(key)
        return known[1] if known and known[0] == stamp else None

    def digest(self, path: str) -> str:
        """SHA-256 of the local file ``path``, hashed only when its stat signature is new."""
        path = os.path.abspath(path)
        before = _stat_signature(os.stat(path))
        known = self._known(path, before)
        if known is not None:
            return known
        digest = sha256_file(path)
        if _stat_signature(os.stat(path)) != before:
            raise OSError(f"{path} changed while it was being read; try again once it is complete")
        self._remember(path, before, digest)
        return digest

    def remote_digest(self, url: str, info: dict[str, Any], fetch: Callable[[], str]) -> str:
        """SHA-256 of the object at ``url`` (``fetch`` downloads and hashes it), fetched only
        when the ETag and size its listing entry ``info`` shows are new."""
        stamp = remote_fingerprint(info)
        known = self._known(url, stamp)
        if known is not None:
            return known
        digest = fetch()
        self._remember(url, stamp, digest)
        return digest

    def remember_remote(self, url: str, info: dict[str, Any], digest: str) -> None:
        """Keep the digest of an object this process just wrote, under the ETag and size its
        listing ``info`` shows, so no process downloads it to verify it."""
        self._remember(url, remote_fingerprint(info), digest)

    def _remember(self, key: str, stamp: str, digest: str) -> None:
        self._load()[key] = [stamp, digest]
        if not self._persistent:
            return
        self._new.add(key)
        if not self._dirty:
            atexit.register(self.save)  # what the last seconds hashed is kept too (save unregisters it)
        self._dirty = True
        if time.monotonic() - self._saved > _SAVE_EVERY_S:
            self.save()

    def save(self) -> None:
        """Write new digests (at most every few seconds while hashing many files, and at exit)."""
        if not self._dirty:
            return
        atexit.unregister(self.save)
        self._saved, self._dirty = time.monotonic(), False
        mine = {key: self._entries[key] for key in self._new}
        self._new = set()
        try:
            saved = self._read()
            merged = {**self._entries, **(saved or {}), **mine}
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".digests-")
            with os.fdopen(fd, "w") as f:
                json.dump(merged, f)
            os.replace(tmp, self.path)
            self._entries, self._read_version = merged, self.path.stat().st_mtime_ns
        except (OSError, InputError):
            pass  # a cache that cannot be written only means hashing again next time


@cache
def _shared(folder: Path) -> DigestCache:
    return DigestCache(folder)


def shared_cache() -> DigestCache:
    """The process's cache of the current cache folder, so that many decisions (automation
    ticks, runs) share what was read of it and its writes."""
    return _shared(cache_folder())


def remote_fingerprint(info: dict[str, Any]) -> str:
    """An S3 object's fingerprint from its listing entry: ETag (content MD5 or part MD5s) + size."""
    etag = str(info.get("ETag") or info.get("etag") or "").strip('"')
    if not etag:
        raise OSError(f"{info.get('name')}: the object store gave no ETag to fingerprint it by")
    return f"etag:{etag}:{info.get('size')}"


def file_fingerprint(local_path: str | None, info: dict[str, Any], cache: DigestCache) -> str:
    """The fingerprint of one listed file: its SHA-256 when local, else its ETag and size."""
    if local_path is not None:
        return f"sha256:{cache.digest(local_path)}"
    return remote_fingerprint(info)


def stored_digest(storage: Storage, key: str, info: dict[str, Any], cache: DigestCache) -> str:
    """SHA-256 of a stored artefact file, from its bytes unless ``cache`` holds it under the
    file's current stamp (stat signature locally; ETag and size, from listing entry ``info``, on
    an object store)."""
    local = storage.local_path(key)
    if local is not None:
        return cache.digest(str(local))
    return cache.remote_digest(storage.url(key), info, lambda: storage.sha256(key))


def tree_fingerprint(url: str, cache: DigestCache) -> str:
    """One fingerprint of every file under a folder or prefix (a checkpoint), names included."""
    fs, root = open_fs(url)
    local = url if "://" not in url or url.startswith("file://") else None
    digest = hashlib.sha256()
    listing = sorted(fs.find(root, detail=True).items())
    if not listing:
        raise FileNotFoundError(f"{url} holds no files")
    for path, info in listing:
        relative = path[len(root) :].lstrip("/")
        fingerprint = file_fingerprint(path if local else None, info, cache)
        digest.update(f"{relative}\0{fingerprint}\n".encode())
    return f"tree:{digest.hexdigest()}"
