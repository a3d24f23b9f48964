"""A project's memory plan on its device: the layer groups its run uses, or a refusal that says
which settings would fit.

`layer_groups` unset lets the plan choose as few groups as the device's memory allows (layer
groups change no artefact: each layer's factors and gradients are the same bytes whatever the
grouping). `layer_groups` governs the EK-FAC fitting chain, the only one partitioned by group; the
scoring passes (query and document gradients) always take the fewest groups their own steps fit
in (`DevicePlan.groups_of`): with a projection the document pass holds the kept eigenvectors, not
the eigenbases, and mostly needs none. A batch size is never changed behind the user's back (it changes float rounding, so
it is among the artefacts' inputs): when even one layer per group does not fit, the run is
refused with the batch size that would, and when a smaller batch would take fewer passes the
plan says so (`pretrace.planning.cheapest.fitting_plan`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from pretrace.config import PretraceConfig
from pretrace.demo.tokenizer import DEMO_VOCAB
from pretrace.demo.train import demo_model_config
from pretrace.errors import InputError
from pretrace.inputs.corpus import list_corpus_files
from pretrace.inputs.fit_sample import sampled_documents
from pretrace.inputs.query_file import read_queries
from pretrace.model.adapter import resolve_device
from pretrace.planning.cheapest import (
    Assessed,
    cheapest,
    fewest_groups,
    fewest_scoring_groups,
    fitting_plan,
    scoring_groups_line,
    settings_lines,
)
from pretrace.planning.measured_rates import RESULTS, MeasuredRates, measured_rates
from pretrace.planning.memory_plan import GB, ModelShape, Plan, Step, Workload, plan, suggestion
from pretrace.planning.study_inputs import CorpusSize, corpus_size, local_tokenizer, model_configuration
from pretrace.planning.targets import Target
from pretrace.project.provenance import Project
from pretrace.store.storage import open_fs


@dataclass
class DevicePlan:
    """The plan a run follows: its settings, layer groups, and the device memory it must fit."""

    plan: Plan
    work: Workload
    budget: int | None  # bytes of device memory; None on a CPU without `device_memory_gb`
    chosen: bool  # the plan chose the layer groups (`layer_groups` unset)
    cheaper: str | None = None  # settings that would take fewer passes (a smaller batch size), as pretrace.yaml lines

    @property
    def groups(self) -> int:
        """The EK-FAC fitting chain's layer groups."""
        return self.work.layer_groups

    def groups_of(self, step: str) -> int:
        """The layer groups of ``step``'s pass (a `pretrace.planning.memory_plan` step name)."""
        return self.work.groups_of(step)

    def headline(self) -> str:
        scoring = f"; {scoring_groups_line(self.work)}, the fewest that fit"
        if self.chosen:
            fewer = f"; in fewer passes: {self.cheaper}" if self.cheaper else ""
            return f"layer_groups: {self.groups} (chosen by the plan){scoring}{fewer}"
        fan_out = " (the EK-FAC fitting partitioned by group: a run per shard and group)" if self.groups > 1 else ""
        return f"layer_groups: {self.groups}{fan_out}{scoring}"

    def summary(self) -> str:
        fits = "no limit set" if self.budget is None else f"fits the device's {self.budget / GB:.3g} GB"
        return f"{self.plan.table()}\n  peak {self.plan.peak.device / GB:.2f} GB ({self.plan.peak.name}): {fits}"


def device_budget(config: PretraceConfig) -> int | None:
    """The device memory a run must fit: `device_memory_gb`, else what the GPU has, else no limit."""
    if config.device_memory_gb is not None:
        return int(config.device_memory_gb * GB)
    device = resolve_device(config.device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[1]
    return None


def workload(config: PretraceConfig, *, documents: int, queries: int, query_length: int | None = None) -> Workload:
    """The plan's view of the settings (queries sized at max_length unless their length is known)."""
    device = resolve_device(config.device).type
    return Workload(
        batch_size=config.batch_size,
        max_length=config.max_length,
        dtype=config.dtype,
        documents=documents,
        queries=queries,
        query_length=query_length or config.max_length,
        projection=config.projection,
        query_rank=config.query_rank,
        layer_groups=config.layer_groups or 1,
        device=device,
        factor_block_size=config.factor_block_size,
        document_rank=config.document_rank,
        stored_gradient_dtype=config.stored_gradient_dtype,
        activation_checkpointing=config.activation_checkpointing,
        fit_documents=config.fit_documents,
        fisher=config.fisher,
        partitioned_groups=(config.layer_groups or 1) > 1,
    )


def device_plan(config: PretraceConfig, shape: ModelShape, work: Workload) -> DevicePlan:
    """The plan of these settings on the configured device, each scoring pass in the fewest groups
    its step fits in (one without a budget); `InputError` when they do not fit, with the plan and
    the settings that would."""
    budget, automatic = device_budget(config), config.layer_groups is None

    def fits(step: Step) -> bool:
        return budget is None or step.device <= budget

    scored = fewest_scoring_groups(shape, work, fits)
    asked = plan(shape, scored or work)
    if scored is not None and all(fits(step) for step in asked.steps):
        return DevicePlan(asked, scored, budget, automatic)
    base = replace(work, layer_groups=1)
    best = fitting_plan(shape, base, budget)[1]  # the cheapest setting; raises when nothing fits
    own = fewest_groups(shape, base, fits)  # at the asked batch size
    own = own and fewest_scoring_groups(shape, own, fits)
    cheaper = None if own is None or best == own else suggestion(work, best)
    if automatic and own is not None:  # layer groups alone: a run can choose them; the rest the user sets
        own = replace(own, partitioned_groups=work.partitioned_groups)
        return DevicePlan(plan(shape, own), own, budget, automatic, cheaper)
    raise InputError(
        f"the run needs {asked.peak.device / GB:.3g} GB of device memory at its peak ({asked.peak.name}) but the "
        f"device has {budget / GB:.3g} GB; set {suggestion(work, own or best)} in pretrace.yaml (layer groups give "
        f"the same results in more passes, the EK-FAC sums refitted a group at a time; a smaller batch_size "
        f"recomputes the gradients; activation checkpointing recomputes each block in the backward pass)"
        f"{f'; in fewer passes: {cheaper}' if cheaper else ''}\n{asked.table()}"
    )


def project_plans(project: Project, largest_shard: bool = False) -> list[tuple[str | None, DevicePlan]]:
    """The plan of the project's model and of each compared model, from their configurations
    alone (no weights), sized by the queries file and the documents tokenized so far (of the
    largest shard alone with ``largest_shard``: what one step of a per-shard asset holds)."""
    demo_unbuilt = project.demo and not Path(project.config.queries).exists()  # `pretrace demo` writes it
    queries = 0 if demo_unbuilt else read_queries(project.config.queries).num_rows
    documents = 0 if demo_unbuilt else _tokenized_documents(project, largest_shard)
    plans = []
    for name, owner in project.projects():
        config = owner.config
        if project.demo:
            model_config = demo_model_config(DEMO_VOCAB, config.max_length)
        else:
            model_config = model_configuration(config.model, config.trust_remote_code)  # no weights needed
        work = workload(config, documents=documents, queries=queries)
        plans.append((name, device_plan(config, ModelShape.of_config(model_config, config.layers), work)))
    return plans


def _tokenized_documents(project: Project, largest_shard: bool = False) -> int:
    """Documents of the corpus shards tokenized and current (their count is known without reading
    the corpus): in all, or in the largest shard."""
    artefact = project.graph["corpus_shards"]
    counts = [0]
    for shard in project.shards:
        manifest = project.manifest(artefact, shard)
        if manifest is not None and project.status(artefact, shard).current:
            counts.append(project.store.reader(artefact, manifest).table("{shard}.parquet", ["doc_id"]).num_rows)
    return max(counts) if largest_shard else sum(counts)


@dataclass(frozen=True)
class StudyPlan:
    """A study on a target: the cheapest setting that fits, its plan and time, and what they rest on."""

    asked: Workload
    chosen: Assessed
    target: Target
    rates: MeasuredRates
    corpus: CorpusSize
    parameters: int
    layers: int

    def report(self) -> str:
        work, chosen = self.asked, self.chosen.work
        sample = sampled_documents(work.fit_documents, work.documents)
        return "\n".join(
            [
                f"target: {self.target.describe()}",
                f"model: {self.parameters / 1e9:.2f}B parameters, {self.layers} tracked layers, {work.dtype}",
                f"corpus: {self.corpus.documents:,} documents of {self.corpus.tokens_per_document:,} tokens "
                f"({self.corpus.tokens / 1e9:.3g}B tokens; {self.corpus.counted}); EK-FAC fitted on {sample:,} of them; "
                f"{work.queries} queries",
                f"cheapest setting that fits: {settings_lines(chosen)}",
                self.chosen.plan.table(),
                f"  study disk {self.chosen.disk / GB:,.1f} GB (every artefact; the fitting sums once per fit shard)",
                self.chosen.estimate.table(),
                "measured rates (the training step's scaled to this model by 6 x parameters FLOPs a token):",
                *(f"  {line}" for line in self.rates.cited()),
            ]
        )


def study_workload(config: PretraceConfig, corpus: CorpusSize, queries: int) -> Workload:
    """The settings and counts of a study run on GPUs (`workload`, sized by ``corpus``)."""
    work = workload(config, documents=corpus.documents, queries=queries)
    return replace(work, device="cuda", document_tokens=corpus.tokens_per_document)


def study_plan(
    config: PretraceConfig,
    model_config: object,
    target: Target,
    corpus: CorpusSize,
    *,
    queries: int,
    fit_shards: int = 1,
    rates_folder: Path = RESULTS,
) -> StudyPlan:
    """The cheapest setting of ``config``'s study on ``target`` (`pretrace.planning.cheapest`), from the
    model's configuration alone; `InputError` naming the setting that would let it run when none fits."""
    shape = ModelShape.of_config(model_config, config.layers)
    work = study_workload(config, corpus, queries)
    rates = measured_rates(target.card, rates_folder)
    chosen = cheapest(shape, work, target, rates, fit_shards)
    return StudyPlan(work, chosen, target, rates, corpus, shape.parameters, len(shape.layers))


def plan_study(
    config: PretraceConfig,
    target: Target,
    *,
    demo: bool = False,
    model: str | None = None,
    documents: int | None = None,
    tokens_per_document: int | None = None,
    bytes_per_token: float | None = None,
    queries: int | None = None,
    rates_folder: Path = RESULTS,
) -> StudyPlan:
    """`study_plan` of a pretrace.yaml's settings (``model`` in place of its model when given): the
    model's config.json, the corpus counted by `corpus_size`, the queries file's count unless
    ``queries`` is given, every corpus file a fit shard unless `fit_shards` names them."""
    model = model or config.model
    model_config = (
        demo_model_config(DEMO_VOCAB, config.max_length)
        if demo
        else model_configuration(model, config.trust_remote_code)
    )
    tokenizer = None if demo or bytes_per_token is not None or documents is not None else local_tokenizer(model)
    corpus = corpus_size(
        config.corpus,
        config.max_length,
        documents=documents,
        tokens_per_document=tokens_per_document,
        bytes_per_token=bytes_per_token,
        tokenizer=tokenizer,
    )
    if queries is None:
        queries = read_queries(config.queries).num_rows if _exists(config.queries) else 0
    if config.fit_shards != "all":
        fit_shards = len(config.fit_shards)
    else:
        fit_shards = len(list_corpus_files(config.corpus).files) if _exists(config.corpus) else 1
    return study_plan(
        config, model_config, target, corpus, queries=queries, fit_shards=max(fit_shards, 1), rates_folder=rates_folder
    )


def _exists(url: str) -> bool:
    fs, path = open_fs(url)
    return fs.exists(path)
