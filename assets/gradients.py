"""document_gradients: per-document loss gradients of one shard, projected as configured."""


import time

import dagster as dg

from pretrace.documents import compute_document_gradients
from resources.settings import ComputeResource, InfluenceResource, ModelResource, StorageResource, config_from_resources

from .common import GPU_ASSET, artefact_metadata, model_for, progress_logger, projection_for, shard_key_of, shard_sequences
from .corpus import corpus_shards
from .partitions import PER_SHARD


@dg.asset(**PER_SHARD, deps=[corpus_shards, "model"], group_name="influence", **GPU_ASSET,
          kinds={"pytorch", "safetensors"}, code_version="1")
def document_gradients(context: dg.AssetExecutionContext, storage: StorageResource, influence: InfluenceResource,
                       model_settings: ModelResource, compute: ComputeResource) -> dg.MaterializeResult:
    """Gradients of each document's summed next-token loss, per tracked layer.

    They do not depend on the queries or the factors, so new queries never redo this pass.
    """
    started = time.monotonic()
    config = config_from_resources(storage, influence, model_settings, compute)
    shard = context.partition_key
    store = storage.open()
    lm = model_for(store, model_settings, compute)
    doc_ids, sequences = shard_sequences(store, shard)
    grads = compute_document_gradients(
        lm, sequences, doc_ids, projection=projection_for(config, lm), batch_size=config.batch_size,
        progress=progress_logger(context, len(sequences), f"document gradients of {shard}"),
    )
    key = shard_key_of("document_gradients", shard)
    store.write_tensors(key, *grads.to_tensors())
    return dg.MaterializeResult(metadata={
        **artefact_metadata(store, key, started=started),
        "documents": len(doc_ids),
        "projection": str(config.projection or "none"),
        "mean_loss_nats": float(grads.losses.mean()),
    })
