"""queries (the user's JSONL, validated to Parquet) and query_gradients (preconditioned)."""


import hashlib
import time
from collections import Counter

import dagster as dg
import pyarrow as pa

from pretrace.ekfac import Factors
from pretrace.query_file import queries_from_table, read_queries
from pretrace.queries import compute_query_gradients
from resources.settings import ComputeResource, InfluenceResource, ModelResource, StorageResource, config_from_resources

from .common import GPU_ASSET, artefact_metadata, markdown_preview, model_for, progress_logger, projection_for
from .ekfac import FACTORS_KEY, ekfac_factors

QUERIES_KEY = "queries/queries.parquet"
QUERY_GRADIENTS_KEY = "query_gradients/query_gradients.safetensors"
QUERY_TABLE_KEY = "query_gradients/queries.parquet"


@dg.asset(group_name="queries", kinds={"parquet"}, code_version="1")
def queries(storage: StorageResource, influence: InfluenceResource) -> dg.MaterializeResult:
    """The queries to explain: id, kind, prompt, completion, answer (and intermediate results)."""
    started = time.monotonic()
    store = storage.open()
    table = read_queries(influence.queries)
    store.write_parquet(QUERIES_KEY, table)
    digest = hashlib.sha256(store.read_bytes(QUERIES_KEY)).hexdigest()[:16]
    kinds = dict(sorted(Counter(table.column("kind").to_pylist()).items()))
    return dg.MaterializeResult(
        metadata={
            **artefact_metadata(store, QUERIES_KEY, started=started),
            "dagster/row_count": table.num_rows,
            "kinds": dg.MetadataValue.json(kinds),
            "preview": markdown_preview(table, ["id", "kind", "prompt", "completion"]),
        },
        data_version=dg.DataVersion(digest),
    )


@dg.asset(deps=[queries, ekfac_factors, "model"], group_name="queries", **GPU_ASSET,
          kinds={"pytorch", "safetensors"}, code_version="1")
def query_gradients(context: dg.AssetExecutionContext, storage: StorageResource, influence: InfluenceResource,
                    model_settings: ModelResource, compute: ComputeResource) -> dg.MaterializeResult:
    """EK-FAC-preconditioned gradients of each completion's loss, and its log-probability."""
    started = time.monotonic()
    config = config_from_resources(storage, influence, model_settings, compute)
    store = storage.open()
    lm = model_for(store, model_settings, compute)
    table = store.read_parquet(QUERIES_KEY)
    factors = Factors.from_tensors(*store.read_tensors(FACTORS_KEY))
    grads = compute_query_gradients(
        lm, factors, queries_from_table(table), projection=projection_for(config, lm), rank=config.query_rank,
        batch_size=config.batch_size, progress=progress_logger(context, table.num_rows, "query gradients"),
    )
    store.write_tensors(QUERY_GRADIENTS_KEY, *grads.to_tensors())
    summary = table.select(["id", "kind", "prompt", "completion", "answer", "intermediates"]).append_column(
        "logprob", pa.array(grads.logprobs.tolist(), pa.float64())
    )
    store.write_parquet(QUERY_TABLE_KEY, summary)
    return dg.MaterializeResult(metadata={
        **artefact_metadata(store, QUERY_GRADIENTS_KEY, QUERY_TABLE_KEY, started=started),
        "queries": table.num_rows,
        "projection": str(config.projection or "none"),
        "query_rank": str(config.query_rank),
        "log-probabilities": markdown_preview(summary, ["id", "kind", "completion", "logprob"], rows=20),
    })
