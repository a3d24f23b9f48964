"""Every artefact pretrace stores, declared once: its files, its state classes, the settings and
inputs its bytes depend on, and its code version.

The recompute policy (`pretrace.project.provenance`), the commit protocol
(`pretrace.project.manifests`), the Dagster assets and the invalidation table of the docs
(docs/recompute.md) all read these declarations, so a dependency is declared in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from pretrace.analyses.shard_statistics import ShardStatistics
from pretrace.influence.document_gradients import DocumentGradients
from pretrace.influence.ekfac import CovarianceState, Eigenbasis, Factors, LambdaState
from pretrace.influence.query_gradients import QueryGradients

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
    or None (shard keys never hold a slash: `pretrace.inputs.corpus.shard_key`)."""
    return "/".join(part for part in (shard, group) if part is not None) or None


def parse_label(text: str) -> tuple[str, str | None]:
    """(name, shard) of a `label` (shard keys never hold brackets: `pretrace.inputs.corpus.shard_key`)."""
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


@dataclass(frozen=True, kw_only=True)
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

    def failure_key(self, shard: str | None = None) -> str:
        """Where a computation that failed on bad input records why, and in which state."""
        return f"{self.name}/{shard}.failed.json" if shard is not None else f"{self.name}/failed.json"

    def label(self, shard: str | None = None) -> str:
        return label(self.name, shard if self.partitioned else None)


SOURCES = ("corpus_file", "checkpoint", "query_file")
"""The user's own inputs, fingerprinted by content (`pretrace.store.fingerprint`)."""

# batch_size is among the inputs of every gradient: the padding of a batch changes float
# rounding (and which labels the sampled Fisher draws), so a clean run at another batch size
# would not give the same bytes. `device` is not: `auto` resolves per machine.
_TRACKED = ("fisher", "seed", "batch_size", "dtype", "fit_documents")  # what changes an EK-FAC pass's sums

USER_MODEL = Artefact(
    name="model",
    per_shard=False,
    files={"model.json": None},
    config=("layers", "trust_remote_code"),
    inputs=(Input("checkpoint"),),
    code_version="1",
    description="the checkpoint's description: fingerprint, architecture, context, tracked layers",
)
DEMO_MODEL = Artefact(
    name="model",
    per_shard=False,
    files={"checkpoint/": None, "model.json": None},
    config=("layers", "max_length", "seed", "demo_steps", "demo_retrain"),
    inputs=(Input("corpus_file", "all_shards"),),
    code_version="4",  # 4: tables of one-operation sums weighted x4 (the recipe is in the shipped record too)
    description="the demo's tiny Llama, trained on the corpus, and its description",
)
CORPUS_SHARDS = Artefact(
    name="corpus_shards",
    per_shard=True,
    files={"{shard}.parquet": None},
    config=("max_length",),
    inputs=(Input("corpus_file", "shard"), Input("model")),
    code_version="2",
    description="tokenized documents of one corpus file, long ones split into chunks",
)
COVARIANCES = Artefact(
    name="ekfac_covariances",
    per_shard=True,
    files={"{shard}.safetensors": CovarianceState},
    config=(*_TRACKED, "factor_block_size"),
    inputs=(Input("corpus_shards", "shard"), Input("model")),
    code_version="3",  # 2: sampled labels drawn by inverse CDF, one uniform per predicted position; 3: the
    # head's gradient in closed form, chunk by chunk (g differs from autograd's by float rounding)
    description="sums of a aᵀ and g gᵀ per tracked layer over one fit shard",
)
EIGENBASIS = Artefact(
    name="ekfac_eigenbasis",
    per_shard=False,
    files={"eigenbasis.safetensors": Eigenbasis},
    config=("factor_block_size",),
    inputs=(Input("ekfac_covariances", "fit_shards"),),
    code_version="1",
    description="eigenvectors of the summed covariances",
)
LAMBDAS = Artefact(
    name="ekfac_lambdas",
    per_shard=True,
    files={"{shard}.safetensors": LambdaState},
    config=_TRACKED,
    inputs=(Input("corpus_shards", "shard"), Input("model"), Input("ekfac_eigenbasis")),
    code_version="3",  # 2: sampled labels drawn by inverse CDF, one uniform per predicted position; 3: the
    # head's gradient in closed form, chunk by chunk (g differs from autograd's by float rounding)
    description="sums of the eigenvalue correction over one fit shard",
)
FACTORS = Artefact(
    name="ekfac_factors",
    per_shard=False,
    files={"factors.safetensors": Factors},
    config=("damping",),
    inputs=(Input("ekfac_eigenbasis"), Input("ekfac_lambdas", "fit_shards")),
    code_version="1",
    description="the damped EK-FAC preconditioner",
)
QUERIES = Artefact(
    name="queries",
    per_shard=False,
    files={"queries.parquet": None},
    config=(),
    inputs=(Input("query_file"),),
    code_version="3",  # 3: each query's own `stop` strings
    description="the validated queries",
)
COMPLETIONS = Artefact(
    name="completions",
    per_shard=False,
    files={"completions.parquet": None},
    config=("completion_tokens", "completion_instruction", "completion_stop", "batch_size", "dtype"),
    inputs=(Input("queries"), Input("model")),
    code_version="2",  # 2: a query's own stop strings; correct = the answer's last non-empty line states it
    description="the queries as explained: the model's own completion where none was given, and whether its greedy answer "
    "is correct",
)
QUERY_GRADIENTS = Artefact(
    name="query_gradients",
    per_shard=False,
    files={"query_gradients.safetensors": QueryGradients, "queries.parquet": None},
    config=("projection", "projection_basis", "query_rank", "seed", "batch_size", "dtype"),
    inputs=(Input("completions"), Input("ekfac_factors"), Input("model")),
    code_version="5",  # 5: a principal projection's diagonal pair computed in float64; losses through the LM head
    # in chunks, its gradient in closed form (float rounding)
    description="preconditioned query gradients, and each completion's log-probability",
)
DOCUMENT_GRADIENTS = Artefact(
    name="document_gradients",
    per_shard=True,
    files={"{shard}.safetensors": DocumentGradients},
    config=("projection", "projection_basis", "document_rank", "stored_gradient_dtype", "seed", "batch_size", "dtype"),
    inputs=(Input("corpus_shards", "shard"), Input("model")),
    code_version="3",  # 3: losses through the LM head in chunks, its gradient in closed form (float rounding)
    description="per-document loss gradients of one shard",
)
INFLUENCE_SCORES = Artefact(
    name="influence_scores",
    per_shard=True,
    files={
        "{shard}.parquet": None,
        "{shard}.stats.safetensors": ShardStatistics,
        "{shard}.top.parquet": None,
        "{shard}.accuracy.json": None,
    },
    config=("top_k", "seed"),
    inputs=(
        Input("query_gradients"),
        Input("document_gradients", "shard"),
        Input("corpus_shards", "shard"),
        Input("model"),
        Input("ekfac_factors"),
    ),
    code_version="8",  # 8: losses through the LM head in chunks, its gradient in closed form (float rounding): the exact-score sample
    description="query x document scores of one shard, its statistics and top documents, and how close stored (projected) "
    "scores are to exact ones on a seeded sample of its documents",
)
ATTRIBUTION_EVAL = Artefact(
    name="attribution_eval",
    per_shard=False,
    files={
        "gains.parquet": None,
        "summary.parquet": None,
        "retrieval.parquet": None,
        "retrieval_summary.parquet": None,
        "token_influence.parquet": None,
        "rankings.parquet": None,
        "evidence.parquet": None,
    },
    config=("tail_patch_k", "top_k", "tail_patch_lr", "seed", "projection", "projection_basis", "batch_size", "dtype"),
    inputs=(
        Input("model"),
        Input("queries"),
        Input("query_gradients"),
        Input("corpus_shards", "all_shards"),
        Input("document_gradients", "all_shards"),
        Input("influence_scores", "all_shards"),
    ),
    code_version="5",  # 5: gradient-normalised influence, evidence.parquet; 4: rankings.parquet, chunked LM-head losses
    description="tail-patch gains of each query's top documents by influence, random, BM25, gradient cosine and dot product "
    "and gradient-normalised influence (unit-normalised, RelatIF), where each ranks the documents stating a query's "
    "`evidence`, those documents, and the token terms of the top and bottom documents' scores",
)
RERANKED_SCORES = Artefact(
    name="reranked_scores",
    per_shard=False,
    files={"reranked.parquet": None},
    config=("rerank_k", "top_k", "batch_size", "dtype"),
    inputs=(
        Input("completions"),
        Input("influence_scores", "all_shards"),
        Input("corpus_shards", "all_shards"),
        Input("ekfac_factors"),
        Input("model"),
    ),
    code_version="3",  # 3: losses through the LM head in chunks, its gradient in closed form (float rounding): exact re-scoring
    description="two-stage retrieval: each query's top and bottom rerank_k documents by stored score over every shard, with "
    "exact EK-FAC scores streamed from the model and ranked by them (stored scores as they are when exact)",
)


def model_comparison(compared: tuple[str, ...]) -> Artefact:
    """This model's scores against each compared model's, over the same documents and queries."""
    inputs = (Input("completions"), *(Input("influence_scores", "all_shards", model) for model in (None, *compared)))
    return Artefact(
        name="model_comparison",
        per_shard=False,
        files={"comparison.parquet": None},
        config=("top_k",),
        inputs=inputs,
        code_version="1",
        description="per shared query and compared model: correlation of the two models' scores over the corpus, overlap and "
        "magnitude of their top and bottom documents",
    )


INFLUENCE_REPORT = Artefact(
    name="influence_report",
    per_shard=False,
    files={},
    config=("top_k", "report_top_fraction", "seed", "exclude_files"),
    inputs=(
        Input("completions"),
        Input("query_gradients"),
        Input("influence_scores", "all_shards"),
        Input("attribution_eval"),
        Input("reranked_scores"),
    ),
    code_version="12",  # 12: sources, correlation groups and per-nat ratios split by the model's answers; 11: answer_detection
    description="the report over every current shard: HTML, tables, figures",
)


def _with_factors(artefact: Artefact) -> Artefact:
    return replace(artefact, inputs=(*artefact.inputs, Input("ekfac_factors")))


def _per_group(artefact: Artefact) -> Artefact:
    """``artefact`` partitioned by layer group: which layers a group holds depends on how many
    groups there are, so the count is among its settings."""
    files = artefact.files if artefact.per_shard else {"{shard}.safetensors": next(iter(artefact.files.values()))}
    return replace(artefact, per_group=True, files=files, config=(*artefact.config, "layer_groups"))


def _sampled_by_count(artefact: Artefact) -> Artefact:
    """``artefact`` fitted on a count of documents (`fit_documents`): which documents of a shard
    are in the sample depends on the ids of every fit shard (`pretrace.inputs.fit_sample`)."""
    return replace(artefact, inputs=(*artefact.inputs, Input("corpus_shards", "fit_shards")))


def _without_seed(artefact: Artefact) -> Artefact:
    return replace(artefact, config=tuple(key for key in artefact.config if key != "seed"))


def artefacts(
    demo: bool = False,
    compared: tuple[str, ...] = (),
    projects_with_factors: bool = False,
    layer_groups: int = 1,
    projects_randomly: bool = True,
    samples_by_count: bool = False,
) -> dict[str, Artefact]:
    """The artefacts of a project in dependency order; the demo trains its own model; compared
    models add their comparison, which the report reads; a projection in the eigenbasis
    (`PretraceConfig.projects_with_factors`) makes what projects documents read the factors;
    more than one layer group partitions the EK-FAC fitting chain by group; gradients depend on
    the seed only through a random projection (`PretraceConfig.projects_randomly`); a fit on a
    count of documents makes the fitting passes read every fit shard's ids."""
    report = INFLUENCE_REPORT
    fitting = [COVARIANCES, EIGENBASIS, LAMBDAS]
    if samples_by_count:
        fitting = [_sampled_by_count(a) if a.per_shard else a for a in fitting]
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
    table = [
        DEMO_MODEL if demo else USER_MODEL,
        CORPUS_SHARDS,
        *fitting,
        FACTORS,
        QUERIES,
        COMPLETIONS,
        queries,
        documents,
        INFLUENCE_SCORES,
        RERANKED_SCORES,
        evaluation,
        *extra,
        report,
    ]
    return {a.name: a for a in table}


def invalidation_table(demo: bool = False) -> str:
    """The invalidation table of docs/recompute.md: which setting and which input each artefact records, so a change
    recomputes it (and then whatever its new bytes feed)."""
    # with a compared model (model_comparison too), a projection in the eigenbasis (what reads the factors)
    # and layer groups (the fitting artefacts partitioned by group record how many)
    table = artefacts(demo, compared=("<name>",), projects_with_factors=True, layer_groups=2)
    seedless = artefacts(
        demo, compared=("<name>",), projects_with_factors=True, layer_groups=2, projects_randomly=False
    )
    keys = sorted({k for a in table.values() for k in a.config})
    rows = ["| setting | recorded by (recomputed when it changes) |", "|---|---|"]
    for key in keys:
        names = [
            f"`{a.name}`" + ("" if key in seedless[a.name].config else " (with a raw or whitened `projection`)")
            for a in table.values()
            if key in a.config
        ]
        rows.append(f"| `{key}` | {', '.join(names)} |")
    scoped = {"`fit_shards` (which shards)": "fit_shards", "the set of corpus files": "all_shards"}
    for what, scope in scoped.items():
        users = [a.name for a in table.values() if any(i.scope == scope for i in a.inputs)]
        rows.append(f"| {what} | {', '.join(f'`{u}`' for u in users)} |")
    by_count = artefacts(demo, layer_groups=2, samples_by_count=True)
    sampled = [a.name for a in by_count.values() if a.per_shard and Input("corpus_shards", "fit_shards") in a.inputs]
    rows.append(
        f"| the fit shards' documents, with a count of `fit_documents` | {', '.join(f'`{u}`' for u in sampled)} "
        "(of every fit shard) |"
    )

    def reading(graph):
        return [a.name for a in graph.values() if any(i.name == FACTORS.name for i in a.inputs)]

    always = reading(artefacts(demo, compared=("<name>",)))
    in_eigenbasis = [f"`{u}`" for u in reading(table) if u not in always]
    rows.append(
        f"| the EK-FAC factors (refitted) | {', '.join(f'`{u}`' for u in always)}; "
        f"{' and '.join(in_eigenbasis)} with a `projection` in the eigenbasis (principal or whitened) |"
    )
    for source in SOURCES:
        users = [a.name for a in table.values() if any(i.name == source for i in a.inputs)]
        rows.append(f"| content of the {source.replace('_', ' ')} | {', '.join(f'`{u}`' for u in users)} |")
    return "\n".join(rows)
