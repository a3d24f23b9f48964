"""influence_scores: the query x document influence of one shard, and its statistics."""

import time

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from pretrace.scores import score_matrix
from pretrace.statistics import summarize_shard
from resources.pretrace import PretraceResource

from .common import RETRY, computing, materialized, table_preview
from .corpus import corpus_shards
from .gradients import document_gradients
from .partitions import PER_SHARD
from .queries import query_gradients


@dg.asset(**PER_SHARD, deps=[query_gradients, document_gradients, corpus_shards], group_name="influence",
          kinds={"parquet"}, retry_policy=RETRY)
def influence_scores(context: dg.AssetExecutionContext, pretrace: PretraceResource) -> dg.MaterializeResult:
    """One row per (query, document): score > 0 means the document raised the completion's probability."""
    started = time.monotonic()
    with computing(context, pretrace) as run:
        query_side = run.reader("query_gradients")
        queries = query_side.state("query_gradients.safetensors")
        docs = run.reader("document_gradients", run.shard).state()
        scores = score_matrix(queries, docs)
        table = pa.table({
            "query_id": pa.array([q for q in queries.ids for _ in docs.ids], pa.string()),
            "doc_id": pa.array(docs.ids * len(queries.ids), pa.string()),
            "score": pa.array(scores.flatten().numpy(), pa.float32()),
        })
        documents = run.reader("corpus_shards", run.shard).table("{shard}.parquet", ["doc_id", "source", "text"])
        query_table = query_side.table("queries.parquet", ["id", "answer", "intermediates"])
        statistics, top = summarize_shard(queries.ids, docs.ids, scores, documents, query_table,
                                          k=run.project.config.top_k, shard=run.shard)
        manifest = run.commit({"{shard}.parquet": table, "{shard}.stats.safetensors": statistics,
                               "{shard}.top.parquet": top})
    best = top.filter(pc.equal(top.column("rank"), 1))
    return materialized(run, manifest, started, queries=len(queries.ids), documents=len(docs.ids),
                        top_documents=table_preview(best, ["query_id", "side", "doc_id", "shard", "score"], rows=20),
                        **{"dagster/row_count": table.num_rows})
