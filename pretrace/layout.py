"""Every artefact pretrace stores: its files, its state class, what it is computed from, and how
it is committed and read back with its manifest.

One table (`ARTEFACTS`) names each artefact's files under the storage root, the configuration
keys and inputs its bytes depend on, and its code version. The recompute policy
(`pretrace.provenance`), the Dagster assets and the README's invalidation table all read it, so
a dependency is declared once.

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
from typing import Any, Literal

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from safetensors import safe_open

from .documents import DocumentGradients
from .ekfac import CovarianceState, Eigenbasis, Factors, LambdaState
from .errors import ConcurrentChange
from .queries import QueryGradients
from .statistics import ShardStatistics
from .storage import Storage

MANIFEST_FORMAT = 1

Scope = Literal["shard", "one", "fit_shards", "all_shards"]


def label(name: str, shard: str | None = None) -> str:
    """How manifests, statuses and logs name an artefact or input partition: ``name[shard]``."""
    return f"{name}[{shard}]" if shard is not None else name


GROUP_PREFIX = "group-"


def group_keys(layer_groups: int) -> list[str]:
    """The layer-group partitions of the EK-FAC fitting artefacts: none for one group."""
    return [f"{GROUP_PREFIX}{i}" for i in range(layer_groups)] if layer_groups > 1 else []


def group_index(group: str) -> int:
    return int(group.removeprefix(GROUP_PREFIX))


def split_key(partition: str) -> tuple[str, str]:
    """(shard, group) of a ``shard/group-i`` partition (`partition_key`)."""
    shard, _, group = partition.rpartition("/")
    return shard, group


def partition_key(shard: str | None, group: str | None) -> str | None:
    """The partition of a (shard, layer group) pair: ``shard/group-i``, ``group-i``, ``shard``
    or None (shard keys never hold a slash: `pretrace.corpus.shard_key`)."""
    return "/".join(part for part in (shard, group) if part is not None) or None


def parse_label(text: str) -> tuple[str, str | None]:
    """(name, shard) of a `label` (shard keys never hold brackets: `pretrace.corpus.shard_key`)."""
    name, _, shard = text.partition("[")
    return name, shard.removesuffix("]") or None


@dataclass(frozen=True)
class Input:
    """Something an artefact is computed from: another artefact, or one of the user's inputs
    (`corpus_file`, `checkpoint`, `query_file`). ``scope`` says which partitions: the same shard,
    the one unpartitioned artefact, every fit shard, or every current shard."""

    name: str
    scope: Scope = "one"
    model: str | None = None  # a compared model's artefact (`compare_models`); None: this model's

    def label(self, shard: str | None = None) -> str:
        return label(self.name, shard) if self.model is None else f"{self.model}/{label(self.name, shard)}"


@dataclass(frozen=True)
class Artefact:
    name: str
    per_shard: bool
    files: dict[str, type | None]
    """File names under ``<name>/`` (``{shard}`` is replaced by the partition) -> the state class
    stored in a safetensors file (None for tables, JSON and bytes). A name ending in ``/`` is a
    folder whose files the computation chooses; an artefact with no files listed may write any."""
    config: tuple[str, ...]
    inputs: tuple[Input, ...]
    code_version: str
    description: str
    per_group: bool = False
    """Partitioned by layer group too (the EK-FAC fitting chain when `layer_groups` > 1): a
    partition is ``shard/group-i`` (``group-i`` for an artefact not per shard)."""

    @property
    def partitioned(self) -> bool:
        return self.per_shard or self.per_group

    def split(self, partition: str | None) -> tuple[str | None, str | None]:
        """(shard, layer group) of one of this artefact's partitions."""
        if not self.per_group:
            return partition, None
        if not self.per_shard:
            return None, partition
        return split_key(partition)

    def key(self, file: str, shard: str | None = None) -> str:
        return f"{self.name}/{file.format(shard=shard)}"

    def manifest_key(self, shard: str | None = None) -> str:
        return f"{self.name}/{shard}.manifest.json" if shard is not None else f"{self.name}/manifest.json"

    def label(self, shard: str | None = None) -> str:
        return label(self.name, shard if self.partitioned else None)


SOURCES = ("corpus_file", "checkpoint", "query_file")
"""The user's own inputs, fingerprinted by content (`pretrace.fingerprint`)."""

# batch_size is among the inputs of every gradient: the padding of a batch changes float
# rounding (and which labels the sampled Fisher draws), so a clean run at another batch size
# would not give the same bytes. `device` is not: `auto` resolves per machine.
_TRACKED = ("fisher", "seed", "batch_size", "dtype")  # what changes an EK-FAC pass's sums

USER_MODEL = Artefact(
    "model", False, {"model.json": None}, ("layers", "trust_remote_code"), (Input("checkpoint"),), "1",
    "the checkpoint's description: fingerprint, architecture, context, tracked layers")
DEMO_MODEL = Artefact(
    "model", False, {"checkpoint/": None, "model.json": None}, ("layers", "max_length", "seed", "demo_steps"),
    (Input("corpus_file", "all_shards"),), "2",
    "the demo's tiny Llama, trained on the corpus, and its description")
CORPUS_SHARDS = Artefact(
    "corpus_shards", True, {"{shard}.parquet": None}, ("max_length",),
    (Input("corpus_file", "shard"), Input("model")), "2",
    "tokenized documents of one corpus file, long ones split into chunks")
COVARIANCES = Artefact(
    "ekfac_covariances", True, {"{shard}.safetensors": CovarianceState}, (*_TRACKED, "factor_block_size"),
    (Input("corpus_shards", "shard"), Input("model")), "1",
    "sums of a aᵀ and g gᵀ per tracked layer over one fit shard")
EIGENBASIS = Artefact(
    "ekfac_eigenbasis", False, {"eigenbasis.safetensors": Eigenbasis}, ("factor_block_size",),
    (Input("ekfac_covariances", "fit_shards"),), "1",
    "eigenvectors of the summed covariances")
LAMBDAS = Artefact(
    "ekfac_lambdas", True, {"{shard}.safetensors": LambdaState}, _TRACKED,
    (Input("corpus_shards", "shard"), Input("model"), Input("ekfac_eigenbasis")), "1",
    "sums of the eigenvalue correction over one fit shard")
FACTORS = Artefact(
    "ekfac_factors", False, {"factors.safetensors": Factors}, ("damping",),
    (Input("ekfac_eigenbasis"), Input("ekfac_lambdas", "fit_shards")), "1",
    "the damped EK-FAC preconditioner")
QUERIES = Artefact(
    "queries", False, {"queries.parquet": None}, (), (Input("query_file"),), "2",
    "the validated queries")
COMPLETIONS = Artefact(
    "completions", False, {"completions.parquet": None},
    ("completion_tokens", "completion_instruction", "completion_stop", "batch_size", "dtype"),
    (Input("queries"), Input("model")), "1",
    "the queries as explained: the model's own completion where none was given, and whether its greedy answer "
    "is correct")
QUERY_GRADIENTS = Artefact(
    "query_gradients", False, {"query_gradients.safetensors": QueryGradients, "queries.parquet": None},
    ("projection", "projection_basis", "query_rank", "seed", "batch_size", "dtype"),
    (Input("completions"), Input("ekfac_factors"), Input("model")), "4",
    "preconditioned query gradients, and each completion's log-probability")
DOCUMENT_GRADIENTS = Artefact(
    "document_gradients", True, {"{shard}.safetensors": DocumentGradients},
    ("projection", "projection_basis", "document_rank", "stored_gradient_dtype", "seed", "batch_size", "dtype"),
    (Input("corpus_shards", "shard"), Input("model")),
    "2", "per-document loss gradients of one shard")
INFLUENCE_SCORES = Artefact(
    "influence_scores", True,
    {"{shard}.parquet": None, "{shard}.stats.safetensors": ShardStatistics, "{shard}.top.parquet": None,
     "{shard}.accuracy.json": None},
    ("top_k", "seed"),
    (Input("query_gradients"), Input("document_gradients", "shard"), Input("corpus_shards", "shard"), Input("model"),
     Input("ekfac_factors")), "7",
    "query x document scores of one shard, its statistics and top documents, and how close stored (projected) "
    "scores are to exact ones on a seeded sample of its documents")
ATTRIBUTION_EVAL = Artefact(
    "attribution_eval", False,
    {"gains.parquet": None, "summary.parquet": None, "retrieval.parquet": None, "retrieval_summary.parquet": None,
     "token_influence.parquet": None},
    ("tail_patch_k", "top_k", "tail_patch_lr", "seed", "projection", "projection_basis", "batch_size", "dtype"),
    (Input("model"), Input("queries"), Input("query_gradients"), Input("corpus_shards", "all_shards"),
     Input("document_gradients", "all_shards"), Input("influence_scores", "all_shards")), "3",
    "tail-patch gains of each query's top documents by influence, random, BM25, gradient cosine and dot product, "
    "where each ranks the documents stating a query's `evidence`, and the token terms of the top and bottom "
    "documents' scores")
RERANKED_SCORES = Artefact(
    "reranked_scores", False, {"reranked.parquet": None}, ("rerank_k", "top_k", "batch_size", "dtype"),
    (Input("completions"), Input("influence_scores", "all_shards"), Input("corpus_shards", "all_shards"),
     Input("ekfac_factors"), Input("model")), "2",
    "two-stage retrieval: each query's top and bottom rerank_k documents by stored score over every shard, with "
    "exact EK-FAC scores streamed from the model and ranked by them (stored scores as they are when exact)")


def model_comparison(compared: tuple[str, ...]) -> Artefact:
    """This model's scores against each compared model's, over the same documents and queries."""
    inputs = (Input("completions"), *(Input("influence_scores", "all_shards", model) for model in (None, *compared)))
    return Artefact(
        "model_comparison", False, {"comparison.parquet": None}, ("top_k",), inputs, "1",
        "per shared query and compared model: correlation of the two models' scores over the corpus, overlap and "
        "magnitude of their top and bottom documents")


INFLUENCE_REPORT = Artefact(
    "influence_report", False, {}, ("top_k", "seed"),
    (Input("completions"), Input("query_gradients"), Input("influence_scores", "all_shards"), Input("attribution_eval"),
     Input("reranked_scores")),
    "9",
    "the report over every current shard: HTML, tables, figures")


def _with_factors(artefact: Artefact) -> Artefact:
    return replace(artefact, inputs=(*artefact.inputs, Input("ekfac_factors")))


def _per_group(artefact: Artefact) -> Artefact:
    """``artefact`` partitioned by layer group: which layers a group holds depends on how many
    groups there are, so the count is among its settings."""
    files = artefact.files if artefact.per_shard else {"{shard}.safetensors": next(iter(artefact.files.values()))}
    return replace(artefact, per_group=True, files=files, config=(*artefact.config, "layer_groups"))


def _without_seed(artefact: Artefact) -> Artefact:
    return replace(artefact, config=tuple(key for key in artefact.config if key != "seed"))


def artefacts(demo: bool = False, compared: tuple[str, ...] = (), projects_with_factors: bool = False,
              layer_groups: int = 1, projects_randomly: bool = True) -> dict[str, Artefact]:
    """The artefacts of a project in dependency order; the demo trains its own model; compared
    models add their comparison, which the report reads; a projection in the eigenbasis
    (`PretraceConfig.projects_with_factors`) makes what projects documents read the factors;
    more than one layer group partitions the EK-FAC fitting chain by group; gradients depend on
    the seed only through a random projection (`PretraceConfig.projects_randomly`)."""
    report = INFLUENCE_REPORT
    fitting = [COVARIANCES, EIGENBASIS, LAMBDAS]
    if layer_groups > 1:
        fitting = [_per_group(a) for a in fitting]
    queries, documents, evaluation = QUERY_GRADIENTS, DOCUMENT_GRADIENTS, ATTRIBUTION_EVAL
    if projects_with_factors:
        documents, evaluation = _with_factors(DOCUMENT_GRADIENTS), _with_factors(ATTRIBUTION_EVAL)
    if not projects_randomly:
        queries, documents = _without_seed(queries), _without_seed(documents)
    extra = []
    if compared:
        extra = [model_comparison(compared)]
        report = replace(INFLUENCE_REPORT, inputs=(*INFLUENCE_REPORT.inputs, Input("model_comparison")))
    table = [DEMO_MODEL if demo else USER_MODEL, CORPUS_SHARDS, *fitting, FACTORS,
             QUERIES, COMPLETIONS, queries, documents, INFLUENCE_SCORES, RERANKED_SCORES, evaluation, *extra, report]
    return {a.name: a for a in table}


# ------------------------------------------------------------------------------ manifests
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

    def to_json(self) -> dict[str, Any]:
        return {"format": MANIFEST_FORMAT, "artefact": self.artefact, "shard": self.shard,
                "code_version": self.code_version, "config": self.config, "inputs": self.inputs,
                "files": self.files, "fingerprint": self.fingerprint}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        if data.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"manifest format {data.get('format')!r}")
        return cls(data["artefact"], data["shard"], data["code_version"], data["config"], data["inputs"],
                   data["files"], data["fingerprint"])


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

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

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
        files = {name.format(shard=shard): self._write(artefact.key(name, shard), content)
                 for name, content in outputs.items()}
        manifest = replace(basis, files=files, fingerprint=content_fingerprint(artefact.name, shard, files))
        self.storage.write_json(artefact.manifest_key(shard), manifest.to_json())
        for name in set(previous.files if previous else ()) - set(files):
            self.storage.delete(f"{artefact.name}/{name}")  # files the new version no longer has
        return manifest

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


def invalidation_table(demo: bool = False) -> str:
    """The README's table: which setting and which input each artefact records, so a change
    recomputes it (and then whatever its new bytes feed)."""
    # with a compared model (model_comparison too), a projection in the eigenbasis (what reads the factors)
    # and layer groups (the fitting artefacts partitioned by group record how many)
    table = artefacts(demo, compared=("<name>",), projects_with_factors=True, layer_groups=2)
    seedless = artefacts(demo, compared=("<name>",), projects_with_factors=True, layer_groups=2, projects_randomly=False)
    keys = sorted({k for a in table.values() for k in a.config})
    rows = ["| setting | recorded by (recomputed when it changes) |", "|---|---|"]
    for key in keys:
        names = [f"`{a.name}`" + ("" if key in seedless[a.name].config else " (with a raw or whitened `projection`)")
                 for a in table.values() if key in a.config]
        rows.append(f"| `{key}` | {', '.join(names)} |")
    scoped = {"`fit_shards` (which shards)": "fit_shards", "the set of corpus files": "all_shards"}
    for what, scope in scoped.items():
        users = [a.name for a in table.values() if any(i.scope == scope for i in a.inputs)]
        rows.append(f"| {what} | {', '.join(f'`{u}`' for u in users)} |")
    reading = lambda graph: [a.name for a in graph.values() if any(i.name == FACTORS.name for i in a.inputs)]  # noqa: E731
    always = reading(artefacts(demo, compared=("<name>",)))
    in_eigenbasis = [f"`{u}`" for u in reading(table) if u not in always]
    rows.append(f"| the EK-FAC factors (refitted) | {', '.join(f'`{u}`' for u in always)}; "
                f"{' and '.join(in_eigenbasis)} with a `projection` in the eigenbasis (principal or whitened) |")
    for source in SOURCES:
        users = [a.name for a in table.values() if any(i.name == source for i in a.inputs)]
        rows.append(f"| content of the {source.replace('_', ' ')} | {', '.join(f'`{u}`' for u in users)} |")
    return "\n".join(rows)
