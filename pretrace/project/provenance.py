"""The recompute policy: is an artefact present and current?

An artefact (per shard) is *current* when its manifest is in storage, its files are there, and
the manifest's basis — code version, the configuration keys it depends on, and the fingerprints
of everything it was computed from — equals the basis it would have if computed now. Storage is
the truth: what any Dagster instance remembers plays no part. The CLI runner, the automation
condition, the corpus sensor, `pretrace status` and the assets themselves all ask `Project`.

Statuses:
- ``current``: nothing to do;
- ``missing``: never computed, deleted, a run died while writing it, or damaged: a file's bytes
  are not the ones its manifest records (verified by content, see `manifest`);
- ``stale``: computed from something else than what it would be computed from now (the reason
  says what differs);
- ``waiting``: an input is not current yet, so what it would be computed from is not known.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

from pretrace.config import PretraceConfig
from pretrace.errors import InputError
from pretrace.inputs.corpus import CorpusFile, CorpusListing, list_corpus_files, shard_key
from pretrace.model.hub_cache import checkpoint_folder
from pretrace.project.artefacts import SOURCES, Artefact, Input, artefacts, group_keys, partition_key
from pretrace.project.manifests import ArtefactStore, Manifest
from pretrace.store.fingerprint import DigestCache, file_fingerprint, shared_cache, stored_digest, tree_fingerprint
from pretrace.store.storage import Storage, open_fs

State = Literal["current", "missing", "stale", "waiting"]
_SHOWN = 4  # differences named in a reason


@dataclass(frozen=True)
class Status:
    state: State
    reason: str
    expected: Manifest | None = None
    """The manifest the artefact would have if computed now (None while waiting)."""

    @property
    def current(self) -> bool:
        return self.state == "current"

    @property
    def runnable(self) -> bool:
        """Out of date, with every input current: computing it now is well defined."""
        return self.state in ("missing", "stale")


class _Waiting(Exception):
    pass


class Project:
    """One configuration's view of its storage root and inputs, memoised for one decision.

    Listings, manifests and statuses are read once; `forget` drops them after a write. Input
    fingerprints stay: a run does not change the user's files.
    """

    def __init__(
        self,
        config: PretraceConfig,
        *,
        demo: bool = False,
        digests: DigestCache | None = None,
        compared_by: tuple[Project, str] | None = None,
    ) -> None:
        refuse_overlapping_storage(config, demo)
        self.config = config
        self.demo = demo
        # a compared model's project: the main project and its name in `compare_models`
        self._main, self.name = compared_by or (None, None)
        self.storage = Storage(config.storage)
        self.digests = digests or shared_cache()
        self.store = ArtefactStore(self.storage, self.digests)
        self.graph = artefacts(
            demo,
            tuple(config.compare_models),
            config.projects_with_factors,
            config.layer_groups or 1,
            config.projects_randomly,
            samples_by_count=isinstance(config.fit_documents, int),
        )
        self.groups = group_keys(config.layer_groups or 1)
        self._settings = config.result_settings()
        self._fitted = {i.name for a in self.graph.values() for i in a.inputs if i.scope == "fit_shards"}
        self._sources: dict[tuple[str, str | None], str] = {}
        self._manifests: dict[tuple[str, str | None], Manifest | None] = {}
        self._statuses: dict[tuple[str, str | None], Status] = {}
        self._dependents: dict[tuple[str, str | None], set[tuple[str, str | None]]] = {}
        self._listings: dict[str, dict[str, dict]] = {}
        self._damaged: dict[tuple[str, str | None], str] = {}
        self._compared: dict[str, Project] = {}

    def compared(self, name: str | None) -> Project:
        """The project of compared model ``name`` (its own storage under this root), or this one."""
        if name is None:
            return self
        if name not in self._compared:
            self._compared[name] = Project(
                self.config.compared(name), demo=self.demo, digests=self.digests, compared_by=(self, name)
            )
        return self._compared[name]

    def projects(self) -> list[tuple[str | None, Project]]:
        """The compared models' projects, then this one (`pretrace run` computes one model's artefacts
        together as far as their dependencies allow: `pipeline.runner.asset_order`)."""
        return [*((name, self.compared(name)) for name in self.config.compare_models), (None, self)]

    # ----------------------------------------------------------------------- the corpus
    @cached_property
    def listing(self) -> CorpusListing:
        """The corpus folder as it is now: its files and the entries skipped, with why."""
        return list_corpus_files(self.config.corpus)

    @cached_property
    def corpus(self) -> dict[str, CorpusFile]:
        """The corpus files present now and not left out (`exclude_files`), by shard key."""
        excluded = set(self.config.exclude_files)
        unknown = sorted(excluded - {f.name for f in self.listing.files})
        if unknown:
            raise InputError(
                f"exclude_files: {', '.join(map(repr, unknown))} {'is' if len(unknown) == 1 else 'are'} not a file of "
                f"{self.config.corpus}; remove {'it' if len(unknown) == 1 else 'them'} from `exclude_files`"
            )
        return {shard_key(f.name): f for f in self.listing.files if f.name not in excluded}

    @property
    def left_out(self) -> list[str]:
        """Entries of the corpus folder that are in no result, each with why."""
        return [
            *self.listing.skipped,
            *(f"{name}: left out by `exclude_files`" for name in sorted(self.config.exclude_files)),
        ]

    @cached_property
    def shards(self) -> list[str]:
        return sorted(self.corpus)

    @cached_property
    def fit_shards(self) -> list[str]:
        """The shards EK-FAC factors are fitted on: `fit_shards`, or every current shard."""
        if self.config.fit_shards == "all":
            return self.shards
        unknown = [s for s in self.config.fit_shards if s not in self.corpus]
        if unknown:
            raise InputError(
                f"fit_shards: {', '.join(map(repr, unknown))} {'is' if len(unknown) == 1 else 'are'} not a shard of "
                f"{self.config.corpus}; the shards are: {', '.join(self.shards) or 'none'} (or use `fit_shards: all`)"
            )
        return sorted(self.config.fit_shards)

    def partitions(self, artefact: Artefact) -> list[str | None]:
        """The partitions an artefact should have: every shard, the fit shards, or the one; each
        of them once per layer group when the artefact is partitioned by group."""
        shards = (self.fit_shards if artefact.name in self._fitted else self.shards) if artefact.per_shard else [None]
        groups = self.groups if artefact.per_group else [None]
        return [partition_key(shard, group) for shard in shards for group in groups]

    # ----------------------------------------------------------------------- inputs
    def source(self, name: str, shard: str | None = None) -> str:
        """The content fingerprint of one of the user's inputs, computed once per Project."""
        key = (name, shard)
        if key not in self._sources:
            self._sources[key] = self.fingerprint_source(name, shard)
        return self._sources[key]

    def fingerprint_source(self, name: str, shard: str | None = None) -> str:
        """The fingerprint as it is now (not memoised): read again after a source was used, it
        shows whether the source changed while it was being read."""
        if name == "corpus_file":
            return self.corpus[shard].fingerprint(self.digests)
        if name == "checkpoint":
            return _checkpoint_fingerprint(self.config.model, self.digests)
        if name == "query_file":
            return _single_file_fingerprint(self.config.queries, "queries", self.digests)
        raise KeyError(name)

    # ----------------------------------------------------------------------- stored state
    def manifest(self, artefact: Artefact, shard: str | None = None) -> Manifest | None:
        """The stored manifest, when it is in storage and every file it lists holds the bytes it
        records: the same size and the same SHA-256. Digests are taken from the bytes, and kept
        only while the file's stamp holds (`pretrace.store.fingerprint.stored_digest`), so a
        file changed in any way since it was verified is hashed again."""
        key = (artefact.name, shard)
        if key not in self._manifests:
            manifest = self.store.manifest(artefact, shard)
            if manifest is not None:
                listing = self._listing(artefact.name)
                for name, digest in manifest.files.items():
                    info = listing.get(f"{artefact.name}/{name}")
                    if info is None or int(info.get("size") or 0) != digest["bytes"]:
                        manifest = None
                        break
                    if stored_digest(self.storage, f"{artefact.name}/{name}", info, self.digests) != digest["sha256"]:
                        self._damaged[key] = f"damaged: {artefact.name}/{name} is not the bytes its manifest records"
                        manifest = None
                        break
            self._manifests[key] = manifest
        return self._manifests[key]

    def _listing(self, name: str) -> dict[str, dict]:
        if name not in self._listings:
            self._listings[name] = self.storage.listing_details(name)
        return self._listings[name]

    def forget(self, artefact: Artefact | None = None, shard: str | None = None) -> None:
        """Drop what was read of storage after a write: everything, or only what one committed
        artefact partition changed (its manifest, its files' listing entries), so a run over
        thousands of shards re-reads one partition per write, not the whole root. Input
        fingerprints are kept."""
        if artefact is None:
            self._statuses.clear()
            self._dependents.clear()
            self._manifests.clear()
            self._listings.clear()
            self._damaged.clear()
            return
        self._forget_status((artefact.name, shard))
        if self._main is not None:  # what the main project computed from it (the comparison)
            self._main._forget_status((f"{self.name}/{artefact.name}", shard))
        self._manifests.pop((artefact.name, shard), None)
        self._damaged.pop((artefact.name, shard), None)
        listing = self._listings.get(artefact.name)
        if listing is None:
            return
        keys = [
            artefact.manifest_key(shard),
            *([artefact.failure_key(shard)] if self.recorded_failure(artefact, shard) else []),
            *(artefact.key(f, shard) for f in artefact.files if not f.endswith("/")),
        ]
        manifest = self.store.manifest(artefact, shard)
        keys += [f"{artefact.name}/{name}" for name in (manifest.files if manifest else ())]
        for key in keys:
            try:
                listing[key] = self.storage.info(key)
            except FileNotFoundError:
                listing.pop(key, None)

    def _forget_status(self, key: tuple[str, str | None]) -> None:
        """Drop a status and every status computed from it (their inputs may have changed)."""
        pending = [key]
        while pending:
            current = pending.pop()
            self._statuses.pop(current, None)
            pending.extend(self._dependents.pop(current, ()))

    # ----------------------------------------------------------------------- the policy
    def expected(self, artefact: Artefact, shard: str | None = None) -> Manifest:
        """The manifest basis the artefact would have if computed now (raises while waiting)."""
        inputs: dict[str, str] = {}
        for source in artefact.inputs:
            for s in self._scope(source, shard, artefact):
                if source.name not in SOURCES:  # a compared model's artefact is keyed `<model>/<name>`
                    upstream = source.name if source.model is None else f"{source.model}/{source.name}"
                    self._dependents.setdefault((upstream, s), set()).add((artefact.name, shard))
                inputs[source.label(s)] = self.compared(source.model)._fingerprint(source.name, s)
        return Manifest(artefact.name, shard, artefact.code_version, _pick(artefact, self._settings), inputs)

    def _scope(self, source: Input, partition: str | None, artefact: Artefact) -> list[str | None]:
        """The partitions of ``source`` that ``artefact``'s ``partition`` reads: by the input's
        scope over shards, and by layer group when the source is partitioned by group (the same
        group, or every group for an artefact that is not)."""
        shard, group = artefact.split(partition)
        shards = {"shard": [shard], "one": [None], "fit_shards": self.fit_shards, "all_shards": self.shards}[
            source.scope
        ]
        upstream = self.compared(source.model).graph.get(source.name)
        if upstream is None or not upstream.per_group:
            return shards
        groups = [group] if group is not None else self.compared(source.model).groups
        return [partition_key(s, g) for s in shards for g in groups]

    def _fingerprint(self, name: str, shard: str | None) -> str:
        if name in SOURCES:
            return self.source(name, shard)
        upstream = self.graph[name]
        status = self.status(upstream, shard)
        if not status.current:
            raise _Waiting(
                f"{self.label(upstream, shard)} is {status.state}" + (f" ({status.reason})" if status.reason else "")
            )
        return self.manifest(upstream, shard).fingerprint

    def label(self, artefact: Artefact, shard: str | None = None) -> str:
        """How logs and statuses name an artefact partition: ``<model>/`` first for a compared model."""
        return artefact.label(shard) if self.name is None else f"{self.name}/{artefact.label(shard)}"

    def status(self, artefact: Artefact | str, shard: str | None = None) -> Status:
        artefact = self.graph[artefact] if isinstance(artefact, str) else artefact
        key = (artefact.name, shard)
        if key not in self._statuses:
            self._statuses[key] = self._evaluate(artefact, shard)
        return self._statuses[key]

    def _evaluate(self, artefact: Artefact, shard: str | None) -> Status:
        try:
            expected = self.expected(artefact, shard)
        except _Waiting as waiting:
            return Status("waiting", str(waiting))
        stored = self.manifest(artefact, shard)
        if stored is None:
            why = self._damaged.get((artefact.name, shard)) or self._failure(artefact, shard, expected)
            return Status("missing", why or "not in storage", expected)
        if stored.basis() != expected.basis():
            return Status("stale", describe_difference(stored, expected), expected)
        return Status("current", "", expected)

    def input_partitions(
        self, artefact: Artefact | str, shard: str | None = None
    ) -> list[tuple[Project, str, str | None]]:
        """(owning project, artefact, partition) of every artefact partition ``artefact``'s
        ``shard`` is computed from (the user's files aside)."""
        artefact = self.graph[artefact] if isinstance(artefact, str) else artefact
        return [
            (self.compared(source.model), source.name, s)
            for source in artefact.inputs
            if source.name not in SOURCES
            for s in self._scope(source, shard, artefact)
        ]

    def may_join(
        self, artefact: Artefact | str, shard: str | None, upstream: Project, name: str, partition: str | None
    ) -> bool:
        """Whether ``artefact``'s ``shard`` may be computed in the same run as its input ``name``'s
        ``partition`` (of ``upstream``): the same partition of artefacts partitioned alike, and an
        input never computed before. One computed before (stale, damaged) may come back with the
        same bytes, and then what reads it is current and must not be recomputed."""
        artefact = self.graph[artefact] if isinstance(artefact, str) else artefact
        source = upstream.graph[name]
        return (
            partition == shard
            and (source.per_shard, source.per_group) == (artefact.per_shard, artefact.per_group)
            and source.manifest_key(partition) not in upstream._listing(name)
        )

    def waiting_on(self, artefact: Artefact | str, shard: str | None = None) -> list[tuple[Project, str, str | None]]:
        """The input partitions that are not current: what a waiting artefact waits for (a
        scheduler may compute them first, in the same run)."""
        return [(o, n, s) for o, n, s in self.input_partitions(artefact, shard) if not o.status(n, s).current]

    def recorded_failure(self, artefact: Artefact, shard: str | None = None) -> bool:
        """Whether storage holds a failure record of this partition (`Computation.record_failure`)."""
        return artefact.failure_key(shard) in self._listing(artefact.name)

    def _failure(self, artefact: Artefact, shard: str | None, expected: Manifest) -> str | None:
        """Why computing this state failed on bad input, if it did (`Computation.record_failure`)."""
        if not self.recorded_failure(artefact, shard):
            return None
        note = self.storage.read_json(artefact.failure_key(shard))
        if note.get("basis") != expected.basis_digest():  # an input or setting changed since: try again
            return None
        file_shard, _ = artefact.split(shard)
        hint = f"; to go on without {self.corpus[file_shard].name}, list it in `exclude_files`" if file_shard else ""
        return f"failed: {note['error']}{hint}"

    def statuses(self) -> list[tuple[Artefact, str | None, Status]]:
        """The status of every artefact partition the project should have, in dependency order."""
        return [(a, s, self.status(a, s)) for a in self.graph.values() for s in self.partitions(a)]

    def orphans(self) -> list[tuple[Artefact, str | None]]:
        """Stored partitions the project no longer has (removed or renamed corpus files, shards
        dropped from `fit_shards`, fitting artefacts of another number of `layer_groups`):
        reported, and removed by `pretrace clean`. Only a manifest pretrace wrote (one that reads
        as this artefact's, of that partition) counts: a user's file of a similar name is not
        pretrace's to remove."""
        found = []
        for artefact in self.graph.values():
            wanted = set(self.partitions(artefact))
            for key in self._listing(artefact.name):
                name = key[len(artefact.name) + 1 :]
                partition = None if name == "manifest.json" else name.removesuffix(".manifest.json")
                if not name.endswith("manifest.json") or partition == name or partition in wanted:
                    continue
                stored = self.store.manifest(artefact, partition)
                if stored is not None and (stored.artefact, stored.shard) == (artefact.name, partition):
                    found.append((artefact, partition))
        return found


def refuse_overlapping_storage(config: PretraceConfig, demo: bool = False) -> None:
    """The storage root shares no folder with the inputs: pretrace writes, verifies and cleans
    only under its root, so a root inside the checkpoint folder (or holding the corpus) would
    write among the user's files and change their fingerprints. The demo trains its own model."""
    root = _location(config.storage)
    for key in ("corpus", "queries") if demo else ("model", "corpus", "queries"):
        value = getattr(config, key)
        other = _location(value)
        if _within(root, other) or _within(other, root):
            raise InputError(
                f"`storage` ({config.storage}) overlaps `{key}` ({value}): pretrace would write among your "
                "inputs; give `storage` a folder of its own beside them, e.g. `storage: ./data`"
            )


def _location(url: str) -> str:
    """A comparable location: ``s3://bucket/prefix``, or a local path with symlinks resolved."""
    if url.startswith("s3://"):
        return url.rstrip("/")
    return os.path.realpath(os.path.expanduser(url.removeprefix("file://")))


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def settings_of(artefact: Artefact, config: PretraceConfig) -> dict:
    """The configuration keys an artefact's bytes depend on, as stored in its manifest."""
    return _pick(artefact, config.result_settings())


def _pick(artefact: Artefact, settings: dict) -> dict:
    return {key: settings[key] for key in artefact.config}


def setting_changes(before: dict, after: dict) -> list[str]:
    r"""Each setting that differs, as ``\`key\` old -> new``: how statuses, logs and the UI name a change."""
    return [
        f"`{key}` {before.get(key)!r} -> {after.get(key)!r}"
        for key in sorted(set(before) | set(after))
        if before.get(key) != after.get(key)
    ]


def describe_difference(stored: Manifest, expected: Manifest) -> str:
    """What differs between a stored manifest and the expected one, in a few words."""
    parts = []
    if stored.code_version != expected.code_version:
        parts.append(f"code version {stored.code_version} -> {expected.code_version}")
    parts += setting_changes(stored.config, expected.config)
    changed = [k for k in expected.inputs if k in stored.inputs and stored.inputs[k] != expected.inputs[k]]
    added = [k for k in expected.inputs if k not in stored.inputs]
    removed = [k for k in stored.inputs if k not in expected.inputs]
    for what, keys in (("changed", changed), ("new", added), ("gone", removed)):
        if keys:
            more = f" and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
            parts.append(f"{what}: {', '.join(keys[:_SHOWN])}{more}")
    return "; ".join(parts) or "stored by another pretrace version"


def _checkpoint_fingerprint(url: str, digests: DigestCache) -> str:
    try:
        return tree_fingerprint(checkpoint_folder(url), digests)
    except FileNotFoundError:
        raise InputError(f"model: {url} holds no checkpoint; give a folder saved with save_pretrained") from None


def _single_file_fingerprint(url: str, key: str, digests: DigestCache) -> str:
    fs, path = open_fs(url)
    try:
        info = fs.info(path)
    except FileNotFoundError:
        raise InputError(f"{key}: {url} not found; create it or fix `{key}:` in pretrace.yaml") from None
    if info.get("type") != "file":
        raise InputError(f"{key}: {url} is not a file")
    local = url if "://" not in url or url.startswith("file://") else None
    return file_fingerprint(local.removeprefix("file://") if local else None, info, digests)
