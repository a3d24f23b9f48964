"""document_gradients: per-document loss gradients of one shard, projected as configured."""

import time
from functools import partial
from typing import Any

import dagster as dg

from pretrace.influence.distributed import SINGLE, Ranks
from pretrace.influence.document_gradients import DocumentGradients, compute_document_gradients_by_rank
from pretrace.project.computation import Computation
from pretrace.resources.pretrace import PretraceResource

from .common import GPU_ASSET, RETRY, also_reading, computing, materialized, progress_logger
from .corpus import corpus_shards
from .partitions import PER_SHARD
from .torchrun import Progresses, stepped_under_torchrun


@dg.asset(
    **PER_SHARD,
    deps=[corpus_shards, "model"],
    group_name="influence",
    **GPU_ASSET,
    kinds={"pytorch", "safetensors"},
    retry_policy=RETRY,
)
def document_gradients(context: dg.AssetExecutionContext, pretrace: PretraceResource) -> dg.MaterializeResult:
    """Gradients of each document's summed next-token loss, per tracked layer.

    They do not depend on the queries, so new queries never redo this pass; with a whitened or
    principal projection (`projection_basis`) they are projected in the EK-FAC eigenbasis and so
    depend on the factors (`EIGENBASIS_DOCUMENT_GRADIENTS`).
    """
    return compute_document_gradients_of_shard(context, pretrace)


def compute_document_gradients_of_shard(
    context: dg.AssetExecutionContext, pretrace: PretraceResource
) -> dg.MaterializeResult:
    started = time.monotonic()
    with computing(context, pretrace) as run:
        if run.project.config.gpus_per_step > 1:
            return stepped_under_torchrun(context, pretrace, run, started)
        grads, metadata = document_gradients_state(run, partial(progress_logger, context))
        manifest = run.commit({"{shard}.safetensors": grads})
    return materialized(run, manifest, started, **metadata)


def document_gradients_state(
    run: Computation, progresses: Progresses, ranks: Ranks = SINGLE
) -> tuple[DocumentGradients | None, dict[str, Any]]:
    """The shard's document gradients and their description; under torch.distributed each rank
    computes its block of batches and rank 0 gets the whole shard (the others None)."""
    config = run.project.config
    lm = run.model()
    table = run.reader("corpus_shards", run.shard).table("{shard}.parquet", ["doc_id", "input_ids"])
    doc_ids, sequences = table.column("doc_id").to_pylist(), table.column("input_ids").to_pylist()
    groups = run.layer_groups(lm)
    grads = compute_document_gradients_by_rank(
        lm,
        sequences,
        doc_ids,
        ranks,
        projection=run.projection(lm),
        rank=config.document_rank,
        batch_size=config.batch_size,
        groups=groups,
        stored_dtype=config.stored_gradient_dtype,
        progress=progresses(len(sequences) * groups, f"document gradients of {run.shard}"),
    )
    metadata = {"documents": len(doc_ids), "projection": str(config.projection or "none")}
    return grads, metadata | ({} if grads is None else {"mean_loss_nats": float(grads.losses.mean())})


EIGENBASIS_DOCUMENT_GRADIENTS = also_reading(
    document_gradients, compute_document_gradients_of_shard, "ekfac_factors", "document_gradients_in_eigenbasis"
)
