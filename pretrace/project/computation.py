"""One computation of one artefact (partition): what it must be computed from, reading exactly
that, and committing the result with its manifest.

The expected manifest is fixed when the computation starts (`Project.status`). Every input is
then read against it: an upstream artefact must still have the fingerprint the manifest names,
and each of the user's files must still have its fingerprint once it has been read. If another
run or project rewrites one meanwhile, the computation raises `ConcurrentChange` instead of
publishing a result mixed from two states of the storage root.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any

from safetensors import safe_open

from pretrace.errors import ConcurrentChange, InputError, NotReady
from pretrace.influence.ekfac import Factors
from pretrace.influence.layer_groups import split_layers
from pretrace.influence.projection import KroneckerProjection, projection_for
from pretrace.inputs.query_file import read_queries
from pretrace.model.adapter import LoadedModel, load_model, load_tokenizer
from pretrace.model.hub_cache import hub_revision
from pretrace.planning.memory_plan import ModelShape
from pretrace.project.artefacts import SOURCES, Artefact, Input, group_index, parse_label
from pretrace.project.device_plan import device_plan, workload
from pretrace.project.manifests import ArtefactReader, Manifest
from pretrace.project.provenance import Project
from pretrace.store.serialization import pack, unpack

_MODELS: dict[tuple, LoadedModel] = {}

SCORING_STEPS = {
    "query_gradients": ("query_gradients",),
    "document_gradients": ("scores",),
    # exact scores of sampled or reranked documents: the full factors (as the query pass holds them)
    # with documents at the batch size (as the document pass runs them)
    "influence_scores": ("query_gradients", "scores"),
    "reranked_scores": ("query_gradients", "scores"),
}
"""The scoring computations, with the memory plan's steps whose fit sets their layer groups; the
rest are the EK-FAC fitting chain's, which take `layer_groups` (`Computation.layer_groups`)."""


class Computation:
    def __init__(
        self,
        project: Project,
        artefact: Artefact | str,
        partition: str | None = None,
        log: Callable[[str], None] = lambda _: None,
    ) -> None:
        self.project = project
        self.log = log
        self.artefact = project.graph[artefact] if isinstance(artefact, str) else artefact
        self.partition = partition
        self.shard, self.group = self.artefact.split(partition)
        if partition not in project.partitions(self.artefact):
            wanted = ", ".join(s for s in project.partitions(self.artefact) if s) or "none"
            raise InputError(
                f"{self.artefact.label(partition)} is not a partition this project computes (its partitions: {wanted})"
            )
        status = project.status(self.artefact, partition)
        if status.state == "waiting":
            raise NotReady(
                f"{self.artefact.label(partition)} cannot be computed yet: {status.reason}; "
                "materialize its inputs first (`pretrace run` does everything in order)"
            )
        self.expected: Manifest = status.expected
        self._readers: dict[tuple[str, str | None, str | None], ArtefactReader] = {}
        self._groups: int | None = None  # `layer_groups`, planned once

    @property
    def label(self) -> str:
        return self.project.label(self.artefact, self.partition)

    def reader(self, name: str, shard: str | None = None, model: str | None = None) -> ArtefactReader:
        """The input artefact ``name`` (of ``shard``; of compared model ``model``), as the expected
        manifest names it; its manifest is checked once, its files on every read."""
        if (name, shard, model) not in self._readers:
            self._readers[(name, shard, model)] = self._open(name, shard, model)
        return self._readers[(name, shard, model)]

    def _open(self, name: str, shard: str | None, model: str | None) -> ArtefactReader:
        owner = self.project.compared(model)
        upstream = owner.graph[name]
        label = Input(name, model=model).label(shard if upstream.partitioned else None)
        manifest = owner.store.manifest(upstream, shard)
        if manifest is None or manifest.fingerprint != self.expected.inputs.get(label):
            raise ConcurrentChange(
                f"{label} changed while {self.label} was being computed: another run or another project "
                f"is writing {owner.storage.root}. Give each project its own `storage:` and rerun."
            )
        return owner.store.reader(upstream, manifest)

    def check_sources(self) -> None:
        """After reading the user's files: each still has the fingerprint the manifest records."""
        for label, fingerprint in self.expected.inputs.items():
            name, shard = parse_label(label)
            if name in SOURCES and self.project.fingerprint_source(name, shard) != fingerprint:
                raise ConcurrentChange(f"{label} changed while {self.label} was being computed from it; rerun")

    def commit(self, outputs: dict[str, Any]) -> Manifest:
        self.check_sources()
        manifest = self.project.store.commit(self.artefact, self.expected, outputs)
        if self.project.recorded_failure(self.artefact, self.partition):  # an earlier state failed; not this one
            self.project.storage.delete(self.artefact.failure_key(self.partition))
        self.project.forget(self.artefact, self.partition)
        return manifest

    def record_failure(self, error: InputError) -> None:
        """Keep why this state of the artefact cannot be computed (bad input), so that status
        and everything downstream name it until the input or a setting changes."""
        self.project.storage.write_json(
            self.artefact.failure_key(self.partition), {"basis": self.expected.basis_digest(), "error": str(error)}
        )
        self.project.forget()  # a new file in the artefact's folder: list it again

    # ------------------------------------------------------------------ the model
    @contextmanager
    def checkpoint(self) -> Iterator[str]:
        """The checkpoint the `model` artefact describes: the user's folder or URL, or the
        demo's trained one in storage, verified."""
        reader = self.reader("model")
        if self.project.demo:
            with reader.folder("checkpoint/") as folder:
                yield str(folder)
            return
        yield self.project.config.model
        if self.project.fingerprint_source("checkpoint") != self.model_info["fingerprint"]:
            raise ConcurrentChange(
                f"the checkpoint {self.project.config.model} changed while {self.label} was loading it; rerun"
            )

    @cached_property
    def model_info(self) -> dict[str, Any]:
        """What the `model` artefact records: fingerprint, architecture, context, tracked layers."""
        return self.reader("model").json("model.json")

    def tokenizer(self) -> Any:
        with self.checkpoint() as path:
            return load_tokenizer(path, trust_remote_code=self.project.config.trust_remote_code)

    def model(self) -> LoadedModel:
        """The model under study, loaded once per process for its fingerprint and settings."""
        config = self.project.config
        key = (
            self.reader("model").manifest.fingerprint,
            tuple(config.layers),
            config.device,
            config.dtype,
            tuple(config.loading.items()),
            config.activation_checkpointing,
        )
        if key not in _MODELS:
            _MODELS.clear()
            with self.checkpoint() as path:
                _MODELS[key] = load_model(
                    path,
                    layers=config.layers,
                    device=config.device,
                    dtype=config.dtype,
                    activation_checkpointing=config.activation_checkpointing,
                    **config.loading,
                )
        return _MODELS[key]

    def layer_groups(self, lm: LoadedModel) -> int:
        """How many layer groups this computation's passes take: for the fitting chain
        `layer_groups`, or as few as the device's memory allows; for a scoring computation
        (`SCORING_STEPS`) the fewest in which its own steps fit, whatever `layer_groups` says (one
        without a device budget). Refused, with the settings that would fit, when even those do not
        (`pretrace.project.device_plan`). A partition of one layer group is one pass over its group."""
        if self._groups is None:
            config = self.project.config
            work = workload(config, documents=0, queries=read_queries(config.queries).num_rows)
            chosen = device_plan(config, ModelShape.of_model(lm.model, lm.model.config, config.layers), work)
            steps = SCORING_STEPS.get(self.artefact.name)
            groups = max(chosen.groups_of(step) for step in steps) if steps else chosen.groups
            if self.group:
                this = f"this partition: {self.group}"
            else:
                why = "the fewest its own steps fit in" if steps else "the fitting chain's"
                this = f"{self.artefact.name} in {groups} layer group{'s' if groups != 1 else ''} ({why})"
            self.log(f"{chosen.headline()}\n{chosen.summary()}\n{this}")
            self._groups = 1 if self.group is not None else groups
        return self._groups

    def group_model(self, lm: LoadedModel) -> LoadedModel:
        """The model restricted to this partition's layer group (all of it when not per group)."""
        if self.group is None:
            return lm
        groups = split_layers(lm.layer_shapes(), self.project.config.layer_groups)
        return lm.restricted(groups[group_index(self.group)])

    def projection(self, lm: LoadedModel, factors: Factors | None = None) -> KroneckerProjection | None:
        """The projection of stored document gradients; one in the eigenbasis is built from the
        factors: those given, else the stored ones read a layer at a time (`StoredFactors`)."""
        config = self.project.config
        if factors is not None or not config.projects_with_factors:
            return projection_for(config, lm.layer_shapes(), factors)
        with self.reader("ekfac_factors").path("factors.safetensors") as path, safe_open(path, framework="pt") as file:
            return projection_for(config, lm.layer_shapes(), StoredFactors(file))


class StoredFactors:
    """Stored EK-FAC factors handed out a layer at a time (a `FactorSource`), each read from the
    open safetensors file when asked for: building a projection then holds one layer's factors in
    host memory, not a 7B model's 70 GB."""

    def __init__(self, file: Any) -> None:
        self._file = file
        self._meta = unpack(file.metadata(), "factors")

    @property
    def layers(self) -> list[str]:
        return list(self._meta["layers"])

    def restricted(self, names: Sequence[str]) -> Factors:
        meta = {key: value for key, value in self._meta.items() if key != "kind"} | {"layers": list(names)}
        return Factors.from_tensors(_FileTensors(self._file), pack({}, "factors", **meta)[1])


class _FileTensors(Mapping[str, Any]):
    """An open safetensors file as a mapping that reads a tensor when it is looked up."""

    def __init__(self, file: Any) -> None:
        self._file = file

    def __getitem__(self, key: str) -> Any:
        return self._file.get_tensor(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._file.keys())

    def __len__(self) -> int:
        return len(self._file.keys())


def model_description(path: str | Path, fingerprint: str, layers: list[str], **loading: bool) -> dict[str, Any]:
    """What the `model` artefact records of a checkpoint (loaded on the CPU to validate it)."""
    lm = load_model(str(path), layers=layers, device="cpu", **loading)
    revision = hub_revision(str(path))
    return {
        **({"hub_revision": revision} if revision else {}),  # a Hugging Face id's cached commit
        "fingerprint": fingerprint,
        "architecture": type(lm.model).__name__,
        "parameters": sum(p.numel() for p in lm.model.parameters()),
        "max_context": lm.max_context,
        "tracked_layers": [{"name": layer.name, "d_out": layer.d_out, "d_in": layer.d_in} for layer in lm.layers],
    }
