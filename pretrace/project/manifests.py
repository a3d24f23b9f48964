"""Committing and reading artefacts with their manifests: what each was computed from, and the
SHA-256 of every file it consists of.

Commit protocol, per artefact (per shard): the old manifest is deleted, the files are written
(each atomically), then the new manifest, which lists every file's SHA-256, is written last. The
manifest is the commit point: files without one are not an artefact, so a run killed anywhere
leaves either the complete old artefact (killed before the delete), or none. Readers verify
each file against the manifest they hold, so a reader never mixes two versions of an artefact
even when another run rewrites it meanwhile (`ConcurrentChange`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from safetensors import safe_open

from pretrace.errors import ConcurrentChange
from pretrace.project.artefacts import Artefact
from pretrace.store.fingerprint import DigestCache
from pretrace.store.storage import Storage

MANIFEST_FORMAT = 1


@dataclass(frozen=True)
class Manifest:
    """What an artefact was computed from (``basis``) and the files it consists of."""

    artefact: str
    shard: str | None
    code_version: str
    config: dict[str, Any]
    inputs: dict[str, str]
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    fingerprint: str = ""

    def basis(self) -> tuple:
        """Everything that decides the artefact's bytes; equal bases mean equal artefacts."""
        return (self.artefact, self.shard, self.code_version, canonical_json(self.config), canonical_json(self.inputs))

    def basis_digest(self) -> str:
        """A short digest of the basis: names one state of an artefact's inputs and settings."""
        return hashlib.sha256(canonical_json(list(self.basis())).encode()).hexdigest()[:16]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "artefact": self.artefact,
            "shard": self.shard,
            "code_version": self.code_version,
            "config": self.config,
            "inputs": self.inputs,
            "files": self.files,
            "fingerprint": self.fingerprint,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        if data.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"manifest format {data.get('format')!r}")
        return cls(
            data["artefact"],
            data["shard"],
            data["code_version"],
            data["config"],
            data["inputs"],
            data["files"],
            data["fingerprint"],
        )


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def content_fingerprint(artefact: str, shard: str | None, files: dict[str, dict[str, Any]]) -> str:
    """The artefact's data version: a digest of its files' digests (not of its inputs), so an
    artefact recomputed to the same bytes leaves everything downstream current."""
    body = canonical_json({"artefact": artefact, "shard": shard, "files": {k: v["sha256"] for k, v in files.items()}})
    return hashlib.sha256(body.encode()).hexdigest()[:32]


Content = Any  # a state with to_tensors(), a pa.Table / pl.DataFrame, a dict (JSON), bytes, or a local Path


class ArtefactStore:
    """Commits and reads artefacts with their manifests under one storage root."""

    def __init__(self, storage: Storage, digests: DigestCache | None = None) -> None:
        self.storage = storage
        self.digests = digests
        """Where a local root's fresh files are verified and their digests kept, so a rerun
        verifies them by their stamp instead of hashing them again."""

    def manifest(self, artefact: Artefact, shard: str | None = None) -> Manifest | None:
        """The stored manifest, or None when absent or unreadable (an unreadable one is no commit)."""
        try:
            return Manifest.from_json(self.storage.read_json(artefact.manifest_key(shard)))
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None

    def commit(self, artefact: Artefact, basis: Manifest, outputs: dict[str, Content]) -> Manifest:
        """Write ``outputs`` (file name -> content) and then the manifest that lists them."""
        shard = basis.shard
        _check_outputs(artefact, outputs)
        previous = self.manifest(artefact, shard)
        self.storage.delete(artefact.manifest_key(shard))
        files = {
            name.format(shard=shard): self._write(artefact.key(name, shard), content)
            for name, content in outputs.items()
        }
        self._verify_published(artefact, files)
        manifest = replace(basis, files=files, fingerprint=content_fingerprint(artefact.name, shard, files))
        self.storage.write_json(artefact.manifest_key(shard), manifest.to_json())
        for name in set(previous.files if previous else ()) - set(files):
            self.storage.delete(f"{artefact.name}/{name}")  # files the new version no longer has
        return manifest

    def _verify_published(self, artefact: Artefact, files: dict[str, dict[str, Any]]) -> None:
        """Each published file's digest kept under its final stamp before the manifest commits
        it, and saved at once for other processes, so no later status hashes or downloads it
        again. A local file is hashed again (one replaced meanwhile is caught); an object is
        kept under the ETag its listing shows (a reader still verifies its bytes)."""
        if self.digests is None:
            return
        for name, digest in files.items():
            key = f"{artefact.name}/{name}"
            path = self.storage.local_path(key)
            if path is None:
                self.digests.remember_remote(self.storage.url(key), self.storage.info(key), digest["sha256"])
            elif self.digests.digest(str(path)) != digest["sha256"]:
                raise ConcurrentChange(f"{path} was replaced while it was being committed")
        self.digests.save()

    def _write(self, key: str, content: Content) -> dict[str, Any]:
        if hasattr(content, "to_tensors"):
            return self.storage.write_tensors(key, *content.to_tensors())
        if isinstance(content, (pa.Table, pl.DataFrame)):
            return self.storage.write_parquet(key, content)
        if isinstance(content, dict):
            return self.storage.write_json(key, content)
        if isinstance(content, Path):
            return self.storage.write_bytes(key, content.read_bytes())
        if isinstance(content, bytes):
            return self.storage.write_bytes(key, content)
        raise TypeError(f"{key}: cannot store a {type(content).__name__}")

    def delete(self, artefact: Artefact, shard: str | None = None) -> list[str]:
        """Remove an artefact: its manifest first (so nothing half-deleted looks committed)."""
        manifest = self.manifest(artefact, shard)
        self.storage.delete(artefact.manifest_key(shard))
        keys = [f"{artefact.name}/{name}" for name in (manifest.files if manifest else ())]
        for key in keys:
            self.storage.delete(key)
        return [artefact.manifest_key(shard), *keys]

    def reader(self, artefact: Artefact, manifest: Manifest) -> ArtefactReader:
        return ArtefactReader(self.storage, artefact, manifest)


def _check_outputs(artefact: Artefact, outputs: dict[str, Content]) -> None:
    if not artefact.files:
        return
    folders = [f for f in artefact.files if f.endswith("/")]
    allowed = set(artefact.files) - set(folders)
    unknown = [n for n in outputs if n not in allowed and not any(n.startswith(f) for f in folders)]
    missing = allowed - set(outputs)
    if unknown or missing:
        raise ValueError(f"{artefact.name}: outputs {sorted(outputs)} do not match its files {sorted(artefact.files)}")


class ArtefactReader:
    """Reads the files of one committed artefact, each checked against the manifest it was
    computed under: the reader either sees exactly that version or raises ConcurrentChange."""

    def __init__(self, storage: Storage, artefact: Artefact, manifest: Manifest) -> None:
        self.storage, self.artefact, self.manifest = storage, artefact, manifest

    def _digest(self, file: str) -> tuple[str, dict[str, Any]]:
        name = file.format(shard=self.manifest.shard)
        try:
            return f"{self.artefact.name}/{name}", self.manifest.files[name]
        except KeyError:
            raise ConcurrentChange(f"{self.artefact.label(self.manifest.shard)} has no file {name}") from None

    @contextmanager
    def path(self, file: str) -> Iterator[str]:
        key, digest = self._digest(file)
        try:
            with self.storage.verified_copy(key, digest) as path:
                yield path
        except FileNotFoundError:
            raise ConcurrentChange(f"{self.storage.url(key)} disappeared while it was being read") from None

    def state(self, file: str | None = None) -> Any:
        """The state object of a safetensors file (the artefact's only one when ``file`` is None)."""
        file = file or next(f for f, cls in self.artefact.files.items() if cls is not None)
        cls = self.artefact.files[file]
        with self.path(file) as path, safe_open(path, framework="pt") as f:
            tensors = {name: f.get_tensor(name) for name in f.keys()}
            return cls.from_tensors(tensors, dict(f.metadata() or {}))

    def table(self, file: str, columns: list[str] | None = None) -> pa.Table:
        with self.path(file) as path:
            return pq.read_table(path, columns=columns)

    def json(self, file: str) -> Any:
        with self.path(file) as path:
            return json.loads(Path(path).read_bytes())

    @contextmanager
    def folder(self, prefix: str) -> Iterator[Path]:
        """A local folder holding the verified files under ``prefix`` (a checkpoint, for a loader)."""
        names = sorted(n for n in self.manifest.files if n.startswith(prefix))
        local = self.storage.local_path(self.artefact.name)
        if local is not None:
            for name in names:
                with self.path(name):
                    pass
            yield local / prefix
            return
        with tempfile.TemporaryDirectory(prefix="pretrace-artefact-") as tmp:
            for name in names:
                target = Path(tmp) / name
                target.parent.mkdir(parents=True, exist_ok=True)
                with self.path(name) as path:
                    shutil.copyfile(path, target)
            yield Path(tmp) / prefix
