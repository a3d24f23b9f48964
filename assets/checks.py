"""Asset checks: what must hold of the stored artefacts, checked in the step that commits them.

Each check is a spec on its asset and runs at the end of that asset's step, on the files just
committed: a check of its own would be a step (on a cluster, a pod) of its own for a few reads.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import dagster as dg
import numpy as np
import pyarrow.compute as pc

from pretrace.influence.projection import BASES
from pretrace.influence.quantization import BITS, row_bytes
from pretrace.project.computation import Computation
from pretrace.project.manifests import ArtefactReader, Manifest
from pretrace.project.provenance import Project


def _stored(project: Project, name: str, shard: str | None = None) -> ArtefactReader | None:
    """The reader of the artefact as committed now, or None when there is none."""
    artefact = project.graph[name]
    manifest = project.manifest(artefact, shard)
    return project.store.reader(artefact, manifest) if manifest else None


def unique_document_ids(project: Project, shard: str | None, reader: ArtefactReader) -> dg.AssetCheckResult:
    ids = reader.table("{shard}.parquet", ["doc_id"]).column("doc_id")
    duplicates = len(ids) - len(pc.unique(ids))
    return dg.AssetCheckResult(passed=not duplicates, metadata={"chunks": len(ids), "duplicates": int(duplicates)})


def scores_complete_and_finite(project: Project, shard: str | None, reader: ArtefactReader) -> dg.AssetCheckResult:
    scores = reader.table("{shard}.parquet")
    documents = _stored(project, "corpus_shards", shard)
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


def projection_error_check(project: Project, shard: str | None, reader: ArtefactReader) -> dg.AssetCheckResult:
    config = project.config
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


def damping_positive(project: Project, shard: str | None, reader: ArtefactReader) -> dg.AssetCheckResult:
    damping = reader.state().damping
    bad = {name: value for name, value in damping.items() if not (math.isfinite(value) and value > 0)}
    return dg.AssetCheckResult(passed=not bad, metadata={"layers": len(damping), "bad": dg.MetadataValue.json(bad)})


def report_covers_current_corpus(project: Project, shard: str | None, reader: ArtefactReader) -> dg.AssetCheckResult:
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


@dataclass(frozen=True)
class Check:
    """A check run in its asset's step, on the reader of the files the step committed."""

    spec: dg.AssetCheckSpec
    evaluate: Callable[[Project, str | None, ArtefactReader], dg.AssetCheckResult]


def _check(asset: str, evaluate: Callable, description: str, blocking: bool = False) -> Check:
    return Check(
        dg.AssetCheckSpec(evaluate.__name__, asset=asset, description=description, blocking=blocking), evaluate
    )


IN_STEP = {
    "corpus_shards": [
        _check(
            "corpus_shards",
            unique_document_ids,
            "Every document chunk of a shard has its own id, so every score names one document.",
            blocking=True,
        )
    ],
    "influence_scores": [
        _check(
            "influence_scores",
            scores_complete_and_finite,
            "One finite score per (query, document chunk) of the shard.",
        ),
        _check(
            "influence_scores",
            projection_error_check,
            "Stored scores (projected documents, low-rank queries) against exact EK-FAC scores on a seeded "
            "sample of the shard's documents, as measured when the shard was scored; warns below "
            "`projection_floor`.",
        ),
    ],
    "ekfac_factors": [
        _check("ekfac_factors", damping_positive, "Damping is positive and finite on every layer."),
    ],
    "influence_report": [
        _check(
            "influence_report",
            report_covers_current_corpus,
            "The report covers every current shard, each scored with the current query gradients.",
        ),
    ],
}


def check_specs(asset: str) -> list[dg.AssetCheckSpec]:
    """The specs an asset declares for the checks its step runs."""
    return [check.spec for check in IN_STEP.get(asset, [])]


def check_results(run: Computation, manifest: Manifest) -> list[dg.AssetCheckResult]:
    """The checks of the artefact ``run`` just committed as ``manifest``, on its files."""
    reader = run.project.store.reader(run.artefact, manifest)
    return [
        check.evaluate(run.project, run.shard, reader)._replace(check_name=check.spec.name)
        for check in IN_STEP.get(run.artefact.name, [])
    ]
