"""reranked_scores: two-stage retrieval over every shard (pretrace.influence.reranking)."""

import time

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from pretrace.analyses.top_documents import merge_top_documents
from pretrace.influence.reranking import (
    agreement_k,
    already_exact,
    candidates_of,
    order_agreement,
    rerank,
    rerank_passes,
)
from pretrace.inputs.query_file import queries_from_table
from pretrace.project.computation import Computation
from pretrace.resources.pretrace import PretraceResource

from .common import GPU_ASSET, RETRY, computing, materialized, progress_logger, table_preview
from .corpus import corpus_shards
from .scores import influence_scores


@dg.asset(
    deps=[influence_scores, corpus_shards, "completions", "ekfac_factors", "model"],
    group_name="influence",
    kinds={"pytorch", "parquet"},
    retry_policy=RETRY,
    **GPU_ASSET,
)
def reranked_scores(context: dg.AssetExecutionContext, pretrace: PretraceResource) -> dg.MaterializeResult:
    """Each query's top and bottom `rerank_k` documents by stored score over the whole corpus, with
    exact EK-FAC scores streamed from the model for those documents only, and ranked by them.
    When stored scores are exact already (no projection or rank), they are kept as they are."""
    started = time.monotonic()
    with computing(context, pretrace) as run:
        config = run.project.config
        shards = run.project.shards
        top = merge_top_documents(
            (run.reader("influence_scores", s).table("{shard}.top.parquet") for s in shards), config.reranked
        )
        chosen = candidates_of(top)
        queries = queries_from_table(run.reader("completions").table("completions.parquet"))
        recomputed = not config.stores_exact_scores and chosen.num_rows > 0
        if recomputed:
            tokens = _candidate_tokens(run, chosen)
            lm = run.model()
            groups = run.layer_groups(lm)
            table = rerank(
                lm,
                run.reader("ekfac_factors").state(),
                queries,
                chosen,
                lambda shard, doc: tokens[(shard, doc)],
                batch_size=config.batch_size,
                groups=groups,
                progress=progress_logger(
                    context, rerank_passes(lm, queries, chosen) * groups, "documents scored exactly"
                ),
            )
        else:
            table = already_exact(chosen, [q.id for q in queries])
        manifest = run.commit({"reranked.parquet": table})
    best = table.filter(pc.equal(table.column("exact_rank"), 1))
    return materialized(
        run,
        manifest,
        started,
        recomputed=recomputed,
        candidates_per_side=config.reranked,
        documents=len(set(zip(table.column("shard").to_pylist(), table.column("doc_id").to_pylist()))),
        **(
            {f"stored_top{k}_kept": kept}
            if (kept := order_agreement(table, k := agreement_k(config.reranked))) is not None
            else {}
        ),
        best_documents=table_preview(
            best, ["query_id", "side", "doc_id", "shard", "exact_score", "stored_rank"], rows=20
        ),
        **{"dagster/row_count": table.num_rows},
    )


def _candidate_tokens(run: Computation, chosen: pa.Table) -> dict[tuple[str, str], list[int]]:
    """The token ids of the candidate documents only, read shard by shard (a shard's other
    documents never become Python lists)."""
    tokens: dict[tuple[str, str], list[int]] = {}
    for shard in sorted(set(chosen.column("shard").to_pylist())):
        wanted = pa.array(
            sorted(set(chosen.filter(pc.equal(chosen.column("shard"), shard)).column("doc_id").to_pylist()))
        )
        documents = run.reader("corpus_shards", shard).table("{shard}.parquet", ["doc_id", "input_ids"])
        documents = documents.filter(pc.is_in(documents.column("doc_id"), value_set=wanted))
        tokens |= {
            (shard, doc): ids
            for doc, ids in zip(documents.column("doc_id").to_pylist(), documents.column("input_ids").to_pylist())
        }
    return tokens
