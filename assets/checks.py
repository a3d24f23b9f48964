"""Asset checks: what must hold of the stored artefacts, checked after each materialization."""

import math

import dagster as dg
import numpy as np
import pyarrow.compute as pc

from pretrace.influence.projection import BASES
from pretrace.influence.quantization import BITS, row_bytes
from pretrace.project.manifests import ArtefactReader
from pretrace.project.provenance import Project
from pretrace.resources.pretrace import PretraceResource

from .partitions import shard_partitions


def _stored(project: Project, name: str, shard: str | None = None) -> ArtefactReader | None:
    """The reader of the artefact as committed now, or None when there is none."""
    artefact = project.graph[name]
    manifest = project.manifest(artefact, shard)
    return project.store.reader(artefact, manifest) if manifest else None


def _missing(name: str) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=False, description=f"no committed {name} artefact in storage")


@dg.asset_check(
    asset="corpus_shards",
    partitions_def=shard_partitions,
    blocking=True,
    description="Every document chunk of a shard has its own id, so every score names one document.",
)
def unique_document_ids(context: dg.AssetCheckExecutionContext, pretrace: PretraceResource) -> dg.AssetCheckResult:
    reader = _stored(pretrace.project(), "corpus_shards", context.partition_key)
    if reader is None:
        return _missing("corpus_shards")
    ids = reader.table("{shard}.parquet", ["doc_id"]).column("doc_id")
    duplicates = len(ids) - len(pc.unique(ids))
    return dg.AssetCheckResult(passed=not duplicates, metadata={"chunks": len(ids), "duplicates": int(duplicates)})


@dg.asset_check(
    asset="influence_scores",
    partitions_def=shard_partitions,
    description="One finite score per (query, document chunk) of the shard.",
)
def scores_complete_and_finite(
    context: dg.AssetCheckExecutionContext, pretrace: PretraceResource
) -> dg.AssetCheckResult:
    project = pretrace.project()
    reader = _stored(project, "influence_scores", context.partition_key)
    if reader is None:
        return _missing("influence_scores")
    scores = reader.table("{shard}.parquet")
    documents = _stored(project, "corpus_shards", context.partition_key)
    query_side = _stored(project, "query_gradients")
    n_docs = documents.table("{shard}.parquet", ["doc_id"]).num_rows if documents else -1
    n_queries = query_side.table("queries.parquet", ["id"]).num_rows if query_side else -1
    values = scores.column("score").to_numpy()
    finite = bool(np.isfinite(values).all())
    expected = n_docs * n_queries
    return dg.AssetCheckResult(
        passed=finite and scores.num_rows == expected,
        metadata={"rows": scores.num_rows, "queries x documents": expected, "all_finite": finite},
    )


@dg.asset_check(
    asset="influence_scores",
    partitions_def=shard_partitions,
    description="Stored scores (projected documents, low-rank queries) against exact EK-FAC scores "
    "on a seeded sample of the shard's documents, as measured when the shard was scored; "
    "warns below `projection_floor`.",
)
def projection_error_check(context: dg.AssetCheckExecutionContext, pretrace: PretraceResource) -> dg.AssetCheckResult:
    project = pretrace.project()
    config = project.config
    reader = _stored(project, "influence_scores", context.partition_key)
    if reader is None:
        return _missing("influence_scores")
    accuracy = reader.json("{shard}.accuracy.json")
    if accuracy["exact"]:
        return dg.AssetCheckResult(passed=True, metadata={"scores": "exact: no projection, dense query gradients"})
    pearson = accuracy["pearson_mean"]
    passed = pearson is not None and pearson >= config.projection_floor
    measured = "undefined (the sampled scores are constant)" if pearson is None else f"r = {pearson:.3f}"
    others = " or ".join(f"`{b}`" for b in BASES if b not in ("raw", config.projection_basis))
    advice = f"raise `projection`, try `projection_basis` {others} or raise or drop `query_rank` and `document_rank`"
    stored_dtype = accuracy.get("stored_dtype", "float32")
    projection = accuracy["projection"]
    if projection is not None and accuracy["document_rank"] is None and stored_dtype not in BITS:
        k_out, k_in = projection["k_out"], projection["k_in"]
        ratio = 2 * k_out * row_bytes("int4", 2 * k_in) / (k_out * row_bytes(stored_dtype, k_in))
        advice += (
            f"; or spend the bytes on a larger projection in fewer bits: `projection` [{2 * k_out}, {2 * k_in}] "
            f"with `stored_gradient_dtype` int4 takes {ratio:.2g}x the bytes of this store"
        )
    return dg.AssetCheckResult(
        passed=passed,
        severity=dg.AssetCheckSeverity.WARN,
        description=None
        if passed
        else (
            f"stored scores correlate with exact ones at {measured}, below projection_floor {config.projection_floor}: "
            f"{advice} (now projection {projection}, query_rank {accuracy['query_rank']}, "
            f"document_rank {accuracy['document_rank']}, stored_gradient_dtype {stored_dtype})"
        ),
        metadata={
            **{k: v for k, v in accuracy.items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
            "projection": str(accuracy["projection"] or "none"),
            "query_rank": str(accuracy["query_rank"]),
            "document_rank": str(accuracy["document_rank"]),
            "stored_dtype": stored_dtype,
            "floor": config.projection_floor,
        },
    )


@dg.asset_check(asset="ekfac_factors", description="Damping is positive and finite on every layer.")
def damping_positive(pretrace: PretraceResource) -> dg.AssetCheckResult:
    reader = _stored(pretrace.project(), "ekfac_factors")
    if reader is None:
        return _missing("ekfac_factors")
    damping = reader.state().damping
    bad = {name: value for name, value in damping.items() if not (math.isfinite(value) and value > 0)}
    return dg.AssetCheckResult(passed=not bad, metadata={"layers": len(damping), "bad": dg.MetadataValue.json(bad)})


@dg.asset_check(
    asset="influence_report",
    description="The report covers every current shard, each scored with the current query gradients.",
)
def report_covers_current_corpus(pretrace: PretraceResource) -> dg.AssetCheckResult:
    project = pretrace.project()
    status = project.status("influence_report")
    unscored = [s for s in project.shards if not project.status("influence_scores", s).current]
    return dg.AssetCheckResult(
        passed=status.current and not unscored,
        metadata={
            "shards": len(project.shards),
            "not scored": dg.MetadataValue.json(unscored),
            "report": f"{status.state} {status.reason}".strip(),
        },
    )


CHECKS = [
    unique_document_ids,
    scores_complete_and_finite,
    projection_error_check,
    damping_positive,
    report_covers_current_corpus,
]
