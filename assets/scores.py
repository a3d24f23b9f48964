"""influence_scores: the query x document influence of one shard, and its statistics."""


import time

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from pretrace.documents import DocumentGradients
from pretrace.queries import QueryGradients
from pretrace.scores import score_matrix
from pretrace.statistics import summarize_shard
from resources.settings import InfluenceResource, StorageResource

from .common import artefact_metadata, markdown_preview, shard_key_of
from .gradients import document_gradients
from .partitions import PER_SHARD
from .queries import QUERY_GRADIENTS_KEY, QUERY_TABLE_KEY, query_gradients


def score_keys(shard: str) -> dict[str, str]:
    """Where a shard's scores live: a documented layout that `pretrace run` users read."""
    return {
        "scores": shard_key_of("influence_scores", shard, "parquet"),
        "statistics": shard_key_of("influence_scores", shard, "stats.safetensors"),
        "top": shard_key_of("influence_scores", shard, "top.parquet"),
    }


@dg.asset(**PER_SHARD, deps=[query_gradients, document_gradients], group_name="influence",
          kinds={"parquet"}, code_version="2")
def influence_scores(context: dg.AssetExecutionContext, storage: StorageResource,
                     influence: InfluenceResource) -> dg.MaterializeResult:
    """One row per (query, document): score > 0 means the document raised the completion's probability."""
    started = time.monotonic()
    shard = context.partition_key
    store = storage.open()
    queries = QueryGradients.from_tensors(*store.read_tensors(QUERY_GRADIENTS_KEY))
    docs = DocumentGradients.from_tensors(*store.read_tensors(shard_key_of("document_gradients", shard)))
    scores = score_matrix(queries, docs)
    keys = score_keys(shard)
    table = pa.table({
        "query_id": pa.array([q for q in queries.ids for _ in docs.ids], pa.string()),
        "doc_id": pa.array(docs.ids * len(queries.ids), pa.string()),
        "score": pa.array(scores.flatten().numpy(), pa.float32()),
    })
    store.write_parquet(keys["scores"], table)
    documents = store.read_parquet(shard_key_of("corpus_shards", shard, "parquet"), columns=["doc_id", "source", "text"])
    query_table = store.read_parquet(QUERY_TABLE_KEY, columns=["id", "answer", "intermediates"])
    statistics, top = summarize_shard(queries.ids, docs.ids, scores, documents, query_table, k=influence.top_k)
    store.write_tensors(keys["statistics"], *statistics.to_tensors())
    store.write_parquet(keys["top"], top)
    return dg.MaterializeResult(metadata={
        **artefact_metadata(store, *keys.values(), started=started),
        "dagster/row_count": table.num_rows,
        "queries": len(queries.ids),
        "documents": len(docs.ids),
        "top_documents": markdown_preview(top.filter(pc.equal(top.column("rank"), 1)), ["query_id", "side", "doc_id", "score"], rows=20),
    })
