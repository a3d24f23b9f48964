"""Artefact storage under one root URL, a local folder or ``s3://bucket/prefix``.

Every asset reads and writes through :class:`Storage` with keys relative to the root
(``"ekfac_covariances/shard-a.safetensors"``), so the same code runs on a laptop and against
S3. Writes are atomic, so a killed run never leaves a half-written artefact that a later run
would take for a finished one. Nothing is pickled: bytes, JSON, Parquet and safetensors only.

S3 settings come only from the standard AWS environment variables: ``AWS_ENDPOINT_URL_S3`` or
``AWS_ENDPOINT_URL`` (endpoint), ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (resolved by
botocore's usual credential chain), ``AWS_REGION`` or ``AWS_DEFAULT_REGION``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from fsspec.implementations.local import LocalFileSystem
from safetensors import safe_open
from safetensors.torch import save_file

from pretrace.errors import ConcurrentChange, InputError, StorageFull, no_space_left

if TYPE_CHECKING:
    import polars as pl

# An unreachable endpoint must fail in seconds, not after minutes of backoff: a refused or
# unroutable connection costs at most 2 attempts x 3 s. s3fs itself retries throttling and
# dropped reads (5 times), so botocore needs few attempts of its own.
_S3_CONFIG = {
    "connect_timeout": 3,
    "read_timeout": 15,
    "retries": {"mode": "standard", "total_max_attempts": 2},
}
_TMP_PREFIX = ".pretrace-tmp."
_STAGING_PREFIX = "pretrace-staging."
_WRITER = re.compile(r"(?P<host>[^.]+)\.(?P<pid>\d+)\.")
"""What follows either prefix in a name pretrace writes: its writer's host and pid."""
STALE_TEMPORARY_S = 24 * 3600
"""Temporaries of another machine are removed only when older than this: their writer may live."""


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_current_umask()
_HOST = socket.gethostname().replace(".", "_")


def _writer_tag() -> str:
    """Names this process in temporary files, so a later run can tell a dead writer's leftovers
    from a live writer's work in progress."""
    return f"{_HOST}.{os.getpid()}."


def pid_alive(pid: int) -> bool:
    """Whether a process of this machine still runs (someone else's counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _is_leftover(name: str, prefix: str, path: str, now: float) -> bool:
    """A temporary pretrace wrote (its prefix, then its writer's host and pid) whose writer is
    dead: this machine's and its pid gone, or another machine's and old enough (one its writer
    has just renamed or removed is not). Any other name is not pretrace's, and never removed."""
    writer = _WRITER.match(name, len(prefix)) if name.startswith(prefix) else None
    if writer is None:
        return False
    if writer["host"] == _HOST:
        return not pid_alive(int(writer["pid"]))
    try:
        return now - os.path.getmtime(path) > STALE_TEMPORARY_S
    except FileNotFoundError:
        return False


@contextmanager
def _full_disk_named(url: str) -> Iterator[None]:
    """A full disk while writing ``url`` becomes one `StorageFull` line (its temporary is gone)."""
    try:
        yield
    except StorageFull:
        raise
    except Exception as exc:
        if not no_space_left(exc):
            raise
        raise StorageFull(
            f"no space left on the device while writing {url}; free space there or point `storage` at a larger "
            "disk, then run again (nothing half-written was kept)"
        ) from exc


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a local file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_digest(path: str) -> dict[str, object]:
    """What a manifest records of a written file: SHA-256 and size."""
    return {"sha256": sha256_file(path), "bytes": os.path.getsize(path)}


def _is_s3(url: str) -> bool:
    return url.startswith("s3://")


def open_fs(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and in-filesystem path of a local path, ``file://`` or ``s3://`` URL.

    Shared by storage, the corpus reader and the model loader so that S3 is configured in one
    place. Local paths come back absolute; S3 paths as ``bucket/key`` (s3fs's convention).
    Directory listings are not cached: sensors must see files that other processes add.
    """
    if _is_s3(url):
        import s3fs  # deferred: botocore is slow to import and local runs never need it

        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        fs = s3fs.S3FileSystem(
            endpoint_url=endpoint or None,
            client_kwargs={"region_name": region} if region else {},
            config_kwargs=_S3_CONFIG,
            use_listings_cache=False,
        )
        return fs, url.removeprefix("s3://").rstrip("/")
    if "://" in url and not url.startswith("file://"):
        raise InputError(f"{url!r}: unsupported URL scheme; use a local path or an s3://bucket/prefix URL")
    path = Path(url.removeprefix("file://")).expanduser()
    return LocalFileSystem(), os.path.abspath(path)


def _check_key(key: str) -> str:
    """Keys are relative, '/'-separated and cannot climb out of the root."""
    parts = key.split("/")
    if key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"storage key {key!r} must be a relative path without '.', '..' or '//'")
    return key


class Storage:
    """Bytes, JSON, Parquet and tensors under one root URL, written atomically."""

    def __init__(self, root: str = "./data") -> None:
        self.fs, self._root = open_fs(root)
        self.root = f"s3://{self._root}" if _is_s3(root) else self._root
        self._local = isinstance(self.fs, LocalFileSystem)

    def __repr__(self) -> str:
        return f"Storage({self.root!r})"

    def _path(self, key: str) -> str:
        return f"{self._root}/{_check_key(key)}"

    def url(self, *parts: str) -> str:
        """Full URL (absolute path when local) of the key made by joining ``parts`` with '/'."""
        return f"{self.root}/{_check_key('/'.join(parts))}" if parts else self.root

    def local_path(self, key: str) -> Path | None:
        """Path on disk of ``key`` when the root is local (for mmap or direct use), else None."""
        return Path(self._path(key)) if self._local else None

    def exists(self, key: str) -> bool:
        return self.fs.isfile(self._path(key))

    def size(self, key: str) -> int:
        """Bytes stored under ``key``."""
        return int(self.fs.size(self._path(key)))

    def info(self, key: str) -> dict[str, Any]:
        """What a listing says of ``key`` (size; an object store's ETag); FileNotFoundError if absent."""
        return self.fs.info(self._path(key))

    def sha256(self, key: str) -> str:
        """SHA-256 of the bytes under ``key`` (downloaded first when the root is remote)."""
        with self._local_copy(key) as path:
            return sha256_file(path)

    def list(self, prefix: str = "") -> list[str]:
        """Keys of all objects under the folder ``prefix``: recursive, sorted, no temp files."""
        return sorted(self.listing(prefix))

    def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is not an error, so deletes can be retried."""
        path = self._path(key)
        if self.fs.isfile(path):
            self.fs.rm_file(path)

    def _write(self, key: str, fill: Callable[[str], None]) -> dict[str, object]:
        """Let ``fill`` write a complete local file, then publish it under ``key`` in one step;
        returns the file's digest (SHA-256 and size), taken before it is published.

        Local: the file is written under a temporary name in the destination folder and
        ``os.replace``d over the key, which is atomic on POSIX and Windows within a filesystem.
        S3: the file is written to local temp space and uploaded with one PUT (multipart for
        objects over 100 MB, which S3 also publishes only on completion); S3 never exposes a
        partial object. We never stream into ``fs.open(key, "wb")`` because fsspec's file
        ``__exit__`` commits the upload even when the writer raised, publishing a truncated
        object. On failure nothing under ``key`` changes and the temporary file is removed; a
        killed writer's temporaries carry its host and pid, so `remove_leftovers` finds them.
        Files get the mode the user's umask gives, as any other tool would write them.
        """
        path = self._path(key)
        with _full_disk_named(self.url(key)):
            return self._publish(path, fill)

    def _publish(self, path: str, fill: Callable[[str], None]) -> dict[str, object]:
        if self._local:
            folder, name = os.path.split(path)
            os.makedirs(folder, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f"{_TMP_PREFIX}{_writer_tag()}{name}.")
            os.close(fd)
            try:
                fill(tmp)
                os.chmod(tmp, _FILE_MODE)
                digest = file_digest(tmp)
                os.replace(tmp, path)
                return digest
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        with tempfile.TemporaryDirectory(prefix=f"{_STAGING_PREFIX}{_writer_tag()}") as tmpdir:
            tmp = os.path.join(tmpdir, "object")
            fill(tmp)
            digest = file_digest(tmp)
            self.fs.put_file(tmp, path)
            return digest

    @contextmanager
    def _local_copy(self, key: str) -> Iterator[str]:
        """A local file with the content of ``key`` (the file itself when the root is local)."""
        path = self._path(key)
        if self._local:
            yield path
            return
        with tempfile.TemporaryDirectory(prefix=f"{_STAGING_PREFIX}{_writer_tag()}") as tmpdir:
            tmp = os.path.join(tmpdir, "object")
            self.fs.get_file(path, tmp)
            yield tmp

    @contextmanager
    def verified_copy(self, key: str, digest: dict[str, object]) -> Iterator[str]:
        """A local file with the content of ``key``, checked to be the bytes ``digest`` describes.

        A concurrent writer replaces files (a new inode locally, a new object on S3); a reader
        that read an artefact's manifest and then its files would otherwise mix two versions.
        Raises `ConcurrentChange` when the bytes differ or the file was replaced while in use.
        """
        with self._local_copy(key) as path:
            before = os.stat(path) if self._local else None
            found = file_digest(path)
            if found["sha256"] != digest["sha256"]:
                raise ConcurrentChange(f"{self.url(key)} is not the file its manifest describes")
            yield path
            if before is not None and os.stat(path).st_ino != before.st_ino:
                raise ConcurrentChange(f"{self.url(key)} was replaced while it was being read")

    def listing(self, prefix: str = "") -> dict[str, int]:
        """Every key under ``prefix`` with its size, in one recursive listing; no temp files."""
        return {key: int(info.get("size") or 0) for key, info in self.listing_details(prefix).items()}

    def listing_details(self, prefix: str = "") -> dict[str, dict[str, Any]]:
        """Every key under ``prefix`` with what the listing says of it (size; an object store's
        ETag), in one recursive listing; no temp files."""
        base = self._path(prefix) if prefix else self._root
        start = len(self._root) + 1
        try:
            found = self.fs.find(base, detail=True)
        except FileNotFoundError:
            return {}
        return {p[start:]: info for p, info in found.items() if not p.rsplit("/", 1)[-1].startswith(_TMP_PREFIX)}

    def remove_leftovers(self) -> list[str]:
        """Delete the temporaries of killed writers (under the root, and S3 staging in local
        temp space); a live writer's are kept. Returns what was removed. A file that another
        writer renames or removes while this looks is its writer's business, not an error."""
        removed = []
        now = time.time()
        if self._local and os.path.isdir(self._root):
            for folder, _, names in os.walk(self._root):
                for name in names:
                    path = os.path.join(folder, name)
                    if _is_leftover(name, _TMP_PREFIX, path, now):
                        with suppress(FileNotFoundError):
                            os.unlink(path)
                            removed.append(path)
        staging = tempfile.gettempdir()
        for name in os.listdir(staging):
            path = os.path.join(staging, name)
            if _is_leftover(name, _STAGING_PREFIX, path, now):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
        return removed

    def write_bytes(self, key: str, data: bytes) -> dict[str, object]:
        return self._write(key, lambda tmp: Path(tmp).write_bytes(data))

    def read_bytes(self, key: str) -> bytes:
        return self.fs.cat_file(self._path(key))

    def write_json(self, key: str, obj: Any) -> dict[str, object]:
        return self.write_bytes(key, json.dumps(obj, ensure_ascii=False, indent=1).encode())

    def read_json(self, key: str) -> Any:
        return json.loads(self.read_bytes(key))

    def write_parquet(self, key: str, table: pa.Table | pl.DataFrame) -> dict[str, object]:
        if not isinstance(table, pa.Table):  # a polars DataFrame (polars is not needed to compute)
            table = table.to_arrow()
        return self._write(key, lambda tmp: pq.write_table(table, tmp))

    def read_parquet(self, key: str, columns: list[str] | None = None) -> pa.Table:
        """The table at ``key``; ``columns`` reads only those (ranged reads on S3)."""
        filesystem = None if self._local else self.fs
        return pq.read_table(self._path(key), columns=columns, filesystem=filesystem)

    def write_tensors(
        self,
        key: str,
        tensors: dict[str, torch.Tensor],
        metadata: dict[str, str] | None = None,
    ) -> dict[str, object]:
        """Save tensors with safetensors; views and shared storage are copied to fit its format."""
        seen: set[int] = set()
        flat = {}
        for name, tensor in tensors.items():
            tensor = tensor.detach().cpu().contiguous()
            ptr = tensor.untyped_storage().data_ptr()
            if ptr in seen and tensor.numel():
                tensor = tensor.clone()
            seen.add(ptr)
            flat[name] = tensor
        return self._write(key, lambda tmp: save_file(flat, tmp, metadata=metadata))

    def read_tensors(self, key: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """Tensors (on CPU) and the string metadata stored with them."""
        with self._local_copy(key) as path, safe_open(path, framework="pt") as f:
            tensors = {name: f.get_tensor(name) for name in f.keys()}
            return tensors, dict(f.metadata() or {})

    def download_dir(self, key_prefix: str, dest: str | os.PathLike) -> Path:
        """Copy every object under ``key_prefix`` into the local folder ``dest``, keeping layout."""
        dest = Path(dest)
        start = len(key_prefix.rstrip("/")) + 1 if key_prefix else 0
        for key in self.list(key_prefix):
            target = dest / key[start:]
            target.parent.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(self._path(key), str(target))
        return dest

    def check_writable(self) -> None:
        """Write, read back and delete a probe object, so a bad root fails before any work."""
        probe = f"{_TMP_PREFIX}{_writer_tag()}probe-{os.urandom(4).hex()}"
        try:
            self.write_bytes(probe, b"ok")
            if self.read_bytes(probe) != b"ok":
                raise OSError("the probe object read back different bytes")
            self.delete(probe)
        except Exception as exc:  # any failure here means the same thing to the user
            hint = (
                "check the bucket exists, AWS_ENDPOINT_URL(_S3) and the AWS credentials"
                if _is_s3(self.root)
                else "check the folder exists or can be created and is writable"
            )
            raise InputError(
                f"storage root {self.root} is not writable ({type(exc).__name__}: {exc}); "
                f"{hint}, or set `storage:` in pretrace.yaml to another location"
            ) from exc
