"""influence_report: the analyses over all shards, from per-shard statistics (placeholder wiring)."""


import time

import dagster as dg
import pyarrow as pa

from pretrace.statistics import merge_top_documents
from resources.settings import InfluenceResource, StorageResource

from .common import artefact_metadata, markdown_preview
from .partitions import shard_partitions
from .queries import QUERY_TABLE_KEY
from .scores import influence_scores, score_keys

TOP_KEY = "influence_report/top_documents.parquet"


@dg.asset(deps=[influence_scores], group_name="report", kinds={"parquet", "html"}, code_version="1")
def influence_report(context: dg.AssetExecutionContext, storage: StorageResource,
                     influence: InfluenceResource) -> dg.MaterializeResult:
    """The top and bottom documents of every query over all scored shards."""
    started = time.monotonic()
    store = storage.open()
    shards = [s for s in context.instance.get_dynamic_partitions(shard_partitions.name) if store.exists(score_keys(s)["top"])]
    if not shards:
        raise dg.Failure("no influence_scores partition is materialized yet")
    top = merge_top_documents([store.read_parquet(score_keys(s)["top"]) for s in shards], influence.top_k)
    queries = store.read_parquet(QUERY_TABLE_KEY, columns=["id", "kind", "prompt", "completion"])
    store.write_parquet(TOP_KEY, top)
    first = top.filter(pa.compute.equal(top.column("rank"), 1))
    return dg.MaterializeResult(metadata={
        **artefact_metadata(store, TOP_KEY, started=started),
        "shards": len(shards),
        "queries": queries.num_rows,
        "top_documents": markdown_preview(first, ["query_id", "side", "doc_id", "score"], rows=40),
    })
