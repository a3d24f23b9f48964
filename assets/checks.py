"""Asset checks: what must hold of the stored artefacts, checked after each materialization."""

import math

import dagster as dg
import numpy as np
import polars as pl
import pyarrow.compute as pc

from pretrace.computation import Computation
from pretrace.layout import ArtefactReader
from pretrace.projection_check import projection_error, sample_documents
from pretrace.provenance import Project
from pretrace.query_file import queries_from_table
from resources.pretrace import PretraceResource

from .common import user_errors
from .partitions import shard_partitions


def _stored(project: Project, name: str, shard: str | None = None) -> ArtefactReader | None:
    """The reader of the artefact as committed now, or None when there is none."""
    artefact = project.graph[name]
    manifest = project.manifest(artefact, shard)
    return project.store.reader(artefact, manifest) if manifest else None


def _missing(name: str) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=False, description=f"no committed {name} artefact in storage")


@dg.asset_check(asset="corpus_shards", partitions_def=shard_partitions, blocking=True,
                description="Every document chunk of a shard has its own id, so every score names one document.")
def unique_document_ids(context: dg.AssetCheckExecutionContext, pretrace: PretraceResource) -> dg.AssetCheckResult:
    reader = _stored(pretrace.project(), "corpus_shards", context.partition_key)
    if reader is None:
        return _missing("corpus_shards")
    ids = reader.table("{shard}.parquet", ["doc_id"]).column("doc_id")
    duplicates = len(ids) - len(pc.unique(ids))
    return dg.AssetCheckResult(passed=not duplicates, metadata={"chunks": len(ids), "duplicates": int(duplicates)})


@dg.asset_check(asset="influence_scores", partitions_def=shard_partitions,
                description="One finite score per (query, document chunk) of the shard.")
def scores_complete_and_finite(context: dg.AssetCheckExecutionContext, pretrace: PretraceResource) -> dg.AssetCheckResult:
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
    return dg.AssetCheckResult(passed=finite and scores.num_rows == expected, metadata={
        "rows": scores.num_rows, "queries x documents": expected, "all_finite": finite})


@dg.asset_check(asset="influence_scores", partitions_def=shard_partitions,
                description="Stored scores (projected documents, low-rank queries) against exact EK-FAC scores "
                            "on a seeded sample of the shard's documents; warns below `projection_floor`.")
def projection_error_check(context: dg.AssetCheckExecutionContext, pretrace: PretraceResource) -> dg.AssetCheckResult:
    project = pretrace.project()
    config = project.config
    if config.projection is None and config.query_rank is None:
        return dg.AssetCheckResult(passed=True, metadata={"scores": "exact: no projection, dense query gradients"})
    stored_scores = _stored(project, "influence_scores", context.partition_key)
    if stored_scores is None or not project.status("influence_scores", context.partition_key).current:
        return _missing("current influence_scores")
    with user_errors():
        scored = Computation(project, "influence_scores", context.partition_key)
        measured = Computation(project, "query_gradients")  # the model, factors and queries it used
        documents = scored.reader("corpus_shards", context.partition_key).table("{shard}.parquet", ["doc_id", "input_ids"])
        sample = sample_documents(documents.num_rows, config.seed, context.partition_key)
        ids = [documents.column("doc_id")[i].as_py() for i in sample]
        scores = pl.from_arrow(stored_scores.table("{shard}.parquet"))
        queries = queries_from_table(measured.reader("completions").table("completions.parquet"))
        stored = (scores.filter(pl.col("doc_id").is_in(ids)).pivot(on="doc_id", index="query_id", values="score")
                  .join(pl.DataFrame({"query_id": [q.id for q in queries]}), on="query_id", how="right")
                  .select(ids).to_numpy())
        error = projection_error(measured.model(), measured.reader("ekfac_factors").state(), queries,
                                 [documents.column("input_ids")[i].as_py() for i in sample], stored,
                                 batch_size=config.batch_size)
    passed = error.pearson_mean >= config.projection_floor
    return dg.AssetCheckResult(
        passed=passed, severity=dg.AssetCheckSeverity.WARN,
        description=None if passed else (
            f"stored scores correlate with exact ones at r = {error.pearson_mean:.3f}, below projection_floor "
            f"{config.projection_floor}: raise `projection` (now {config.projection}) or drop `query_rank`"),
        metadata={"pearson_mean": error.pearson_mean, "pearson_min": error.pearson_min,
                  "top1_agreement": error.top1_agreement, "documents": error.documents, "queries": error.queries,
                  "projection": str(config.projection or "none"), "query_rank": str(config.query_rank),
                  "floor": config.projection_floor})


@dg.asset_check(asset="ekfac_factors", description="Damping is positive and finite on every layer.")
def damping_positive(pretrace: PretraceResource) -> dg.AssetCheckResult:
    reader = _stored(pretrace.project(), "ekfac_factors")
    if reader is None:
        return _missing("ekfac_factors")
    damping = reader.state().damping
    bad = {name: value for name, value in damping.items() if not (math.isfinite(value) and value > 0)}
    return dg.AssetCheckResult(passed=not bad, metadata={"layers": len(damping), "bad": dg.MetadataValue.json(bad)})


@dg.asset_check(asset="influence_report",
                description="The report covers every current shard, each scored with the current query gradients.")
def report_covers_current_corpus(pretrace: PretraceResource) -> dg.AssetCheckResult:
    project = pretrace.project()
    status = project.status("influence_report")
    unscored = [s for s in project.shards if not project.status("influence_scores", s).current]
    return dg.AssetCheckResult(passed=status.current and not unscored, metadata={
        "shards": len(project.shards), "not scored": dg.MetadataValue.json(unscored),
        "report": f"{status.state} {status.reason}".strip()})


CHECKS = [unique_document_ids, scores_complete_and_finite, projection_error_check, damping_positive,
          report_covers_current_corpus]
