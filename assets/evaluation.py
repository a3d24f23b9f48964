"""attribution_eval: do the documents influence ranks first cause the answer? (pretrace.evaluation.attribution_check)"""

import time
from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
import pyarrow as pa
from safetensors import safe_open

from pretrace.analyses.top_documents import merge_top_documents
from pretrace.evaluation.attribution_check import Documents, attribution_check, query_evidence, query_frequency
from pretrace.influence.token_influence import token_influence_table
from pretrace.inputs.query_file import queries_from_table
from pretrace.project.computation import StoredFactors
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
    random documents, by BM25, by gradient cosine, by raw-gradient dot product (identity) and by
    gradient-normalised influence (unit-normalised; RelatIF with a projection in the eigenbasis),
    and the change in log p(completion); the documents stating each query's evidence; and the
    per-token terms of the top and bottom documents' scores (pretrace.influence.token_influence)."""
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
        meta = run.reader("queries").table("queries.parquet", ["id", "meta"])
        preconditioned = run.reader("query_gradients").state("query_gradients.safetensors")
        with _stored_factors(run) as factors:
            check = attribution_check(
                lm,
                queries,
                documents,
                top,
                ((s, run.reader("document_gradients", s).state()) for s in shards),
                query_evidence=query_evidence(meta, queries),
                query_frequency=query_frequency(meta, queries),
                k=k,
                learning_rate=config.tail_patch_lr,
                seed=config.seed,
                projection=projection,
                batch_size=config.batch_size,
                progress=progress_logger(context, len(queries), "tail-patch queries"),
                preconditioned=preconditioned,
                factors=factors,
            )
        position = documents.position
        tokens = token_influence_table(
            lm,
            preconditioned,
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
        **{f"mrr_{r['kind']}_{r['method']}": r["mrr"] for r in retrieval.to_pylist()},
    )


EIGENBASIS_ATTRIBUTION_EVAL = also_reading(
    attribution_eval, compute_attribution_eval, "ekfac_factors", "attribution_eval_in_eigenbasis"
)
"""With a projection in the eigenbasis (whitened or principal) the gradient baselines'
projection is built from the factors."""


@contextmanager
def _stored_factors(run) -> Iterator[StoredFactors | None]:
    """The stored factors, a layer at a time, when this project's asset reads them (a projection
    in the eigenbasis): RelatIF's self-influence weights them; else None."""
    if not run.project.config.projects_with_factors:
        yield None
        return
    with run.reader("ekfac_factors").path("factors.safetensors") as path, safe_open(path, framework="pt") as file:
        yield StoredFactors(file)


def _table(table: pa.Table) -> dg.MetadataValue:
    return table_metadata(table.to_pylist(), {c: str(t) for c, t in zip(table.column_names, table.schema.types)})
