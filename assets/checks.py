"""Asset checks: what must hold of the stored artefacts, checked after each materialization."""

import math

import dagster as dg
import numpy as np
import pyarrow.compute as pc

from pretrace.layout import ArtefactReader
from pretrace.provenance import Project
from resources.pretrace import PretraceResource

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


CHECKS = [unique_document_ids, scores_complete_and_finite, damping_positive, report_covers_current_corpus]
