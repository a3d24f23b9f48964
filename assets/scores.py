"""influence_scores: the query x document influence of one shard, its statistics, and how close
stored scores are to exact ones."""

import time

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import torch

from pretrace.analyses.shard_statistics import summarize_shard
from pretrace.config import exact_store
from pretrace.evaluation.projection_check import projection_error, sample_documents, score_accuracy
from pretrace.influence.document_gradients import DocumentGradients
from pretrace.influence.query_gradients import QueryGradients
from pretrace.influence.scores import score_matrix
from pretrace.inputs.query_file import queries_from_table
from pretrace.project.computation import Computation
from pretrace.resources.pretrace import PretraceResource

from .checks import check_specs
from .common import GPU_ASSET, RETRY, computing, materialized, table_preview
from .corpus import corpus_shards
from .ekfac import ekfac_factors
from .gradients import document_gradients
from .partitions import PER_SHARD
from .queries import query_gradients


@dg.asset(
    **PER_SHARD,
    deps=[query_gradients, document_gradients, corpus_shards, ekfac_factors, "model"],
    group_name="influence",
    kinds={"parquet"},
    retry_policy=RETRY,
    check_specs=check_specs("influence_scores"),
    **GPU_ASSET,
)
def influence_scores(context: dg.AssetExecutionContext, pretrace: PretraceResource) -> dg.MaterializeResult:
    """One row per (query, document): score > 0 means the document raised the completion's
    probability. Approximate stored scores (`projection`, `query_rank`, `document_rank`) are
    compared with exact EK-FAC scores streamed from the model for a seeded sample of the shard's
    documents."""
    started = time.monotonic()
    with computing(context, pretrace) as run:
        query_side = run.reader("query_gradients")
        queries = query_side.state("query_gradients.safetensors")
        docs = run.reader("document_gradients", run.shard).state()
        scores = score_matrix(queries, docs)
        table = pa.table(
            {
                "query_id": pa.array([q for q in queries.ids for _ in docs.ids], pa.string()),
                "doc_id": pa.array(docs.ids * len(queries.ids), pa.string()),
                "score": pa.array(scores.flatten().numpy(), pa.float32()),
            }
        )
        documents = run.reader("corpus_shards", run.shard).table("{shard}.parquet", ["doc_id", "source", "text"])
        query_table = query_side.table("queries.parquet", ["id", "answer", "intermediates"])
        statistics, top = summarize_shard(
            queries.ids, docs.ids, scores, documents, query_table, k=run.project.config.top_k, shard=run.shard
        )
        accuracy = _accuracy(run, queries, docs, scores)
        manifest = run.commit(
            {
                "{shard}.parquet": table,
                "{shard}.stats.safetensors": statistics,
                "{shard}.top.parquet": top,
                "{shard}.accuracy.json": accuracy,
            }
        )
    best = top.filter(pc.equal(top.column("rank"), 1))
    return materialized(
        run,
        manifest,
        started,
        queries=len(queries.ids),
        documents=len(docs.ids),
        top_documents=table_preview(best, ["query_id", "side", "doc_id", "shard", "score"], rows=20),
        **{k: v for k, v in accuracy.items() if isinstance(v, (bool, float))},
        **{"dagster/row_count": table.num_rows},
    )


def _accuracy(run: Computation, queries: QueryGradients, docs: DocumentGradients, scores: torch.Tensor) -> dict:
    """`score_accuracy` of this shard: exact scores need no check; approximate ones are measured."""
    config = run.project.config
    if exact_store(docs.projection, queries.rank, docs.rank, docs.dtype):
        return score_accuracy(None, None, None, None)
    sample = sample_documents(len(docs.ids), config.seed, run.shard)
    tokens = run.reader("corpus_shards", run.shard).table("{shard}.parquet", ["input_ids"]).column("input_ids")
    explained = queries_from_table(run.reader("query_gradients").table("queries.parquet"))
    lm = run.model()
    error = projection_error(
        lm,
        run.reader("ekfac_factors").state(),
        explained,
        [tokens[i].as_py() for i in sample],
        scores[:, sample].numpy(),
        batch_size=config.batch_size,
        groups=run.layer_groups(lm),
    )
    return score_accuracy(error, docs.projection, queries.rank, docs.rank, docs.dtype)
