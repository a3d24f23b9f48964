"""attribution_eval: do the documents influence ranks first cause the answer? (pretrace.evaluation.attribution_check)"""

import time

import dagster as dg
import pyarrow as pa

from pretrace.analyses.top_documents import merge_top_documents
from pretrace.evaluation.attribution_check import Documents, attribution_check, query_evidence
from pretrace.influence.token_influence import token_influence_table
from pretrace.inputs.query_file import queries_from_table
from pretrace.resources.pretrace import PretraceResource

from .common import GPU_ASSET, RETRY, also_reading, computing, materialized, progress_logger, table_metadata
from .corpus import corpus_shards
from .gradients import document_gradients
from .scores import influence_scores


@dg.asset(
    deps=[influence_scores, document_gradients, corpus_shards, "queries", "query_gradients", "model"],
    group_name="report",
    kinds={"pytorch", "parquet"},
    retry_policy=RETRY,
    **GPU_ASSET,
)
def attribution_eval(context: dg.AssetExecutionContext, pretrace: PretraceResource) -> dg.MaterializeResult:
    """Tail-patch check of every query: one SGD step on its top-k documents by influence, by k
    random documents, by BM25, by raw-gradient cosine and by raw-gradient dot product (identity),
    and the change in log p(completion); and the per-token terms of the top and bottom documents'
    scores (pretrace.influence.token_influence)."""
    return compute_attribution_eval(context, pretrace)


def compute_attribution_eval(context: dg.AssetExecutionContext, pretrace: PretraceResource) -> dg.MaterializeResult:
    started = time.monotonic()
    with computing(context, pretrace) as run:
        config = run.project.config
        shards = run.project.shards
        k = min(config.tail_patch_k, config.top_k)
        lm = run.model()
        projection = run.projection(lm)
        documents = Documents.from_shards(
            (
                s,
                run.reader("corpus_shards", s).table(
                    "{shard}.parquet", ["doc_id", "input_ids", "text", "meta", "source"]
                ),
            )
            for s in shards
        )
        top = merge_top_documents((run.reader("influence_scores", s).table("{shard}.top.parquet") for s in shards), k)
        queries = queries_from_table(run.reader("query_gradients").table("queries.parquet"))
        evidence = query_evidence(run.reader("queries").table("queries.parquet", ["id", "meta"]), queries)
        check = attribution_check(
            lm,
            queries,
            documents,
            top,
            ((s, run.reader("document_gradients", s).state()) for s in shards),
            query_evidence=evidence,
            k=k,
            learning_rate=config.tail_patch_lr,
            seed=config.seed,
            projection=projection,
            batch_size=config.batch_size,
            progress=progress_logger(context, len(queries), "tail-patch queries"),
        )
        position = documents.position
        tokens = token_influence_table(
            lm,
            run.reader("query_gradients").state("query_gradients.safetensors"),
            top,
            lambda shard, doc: documents.tokens[position[(shard, doc)]],
            projection=projection,
            batch_size=config.batch_size,
        )
        manifest = run.commit({**check.outputs(), "token_influence.parquet": tokens})
    overall = check.summary.filter(pa.compute.equal(check.summary.column("kind"), "all")).to_pylist()
    retrieval = check.retrieval_summary.filter(
        pa.compute.equal(check.retrieval_summary.column("evidence_documents"), 0)
    )
    return materialized(
        run,
        manifest,
        started,
        k=k,
        learning_rate=config.tail_patch_lr,
        queries=len(queries),
        tail_patch=_table(check.summary),
        evidence_retrieval=_table(check.retrieval_summary),
        **{f"mean_gain_{r['method']}": r["mean_gain"] for r in overall},
        **{f"mrr_{r['method']}": r["mrr"] for r in retrieval.to_pylist()},
    )


EIGENBASIS_ATTRIBUTION_EVAL = also_reading(
    attribution_eval, compute_attribution_eval, "ekfac_factors", "attribution_eval_in_eigenbasis"
)
"""With a projection in the eigenbasis (whitened or principal) the gradient baselines'
projection is built from the factors."""


def _table(table: pa.Table) -> dg.MetadataValue:
    return table_metadata(table.to_pylist(), {c: str(t) for c, t in zip(table.column_names, table.schema.types)})
