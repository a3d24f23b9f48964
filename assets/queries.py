"""queries (the user's JSONL, validated to Parquet), completions (the model's own where none was
given, and whether it answers correctly) and query_gradients (preconditioned)."""

import time
from collections import Counter

import dagster as dg
import pyarrow as pa

from pretrace.analyses.completions import GENERATED, complete_queries, generation_settings
from pretrace.influence.query_gradients import compute_query_gradients
from pretrace.inputs.query_file import queries_from_table, read_queries
from pretrace.resources.pretrace import PretraceResource

from .common import GPU_ASSET, RETRY, computing, materialized, progress_logger, table_preview
from .ekfac import ekfac_factors


@dg.observable_source_asset(
    name="query_file",
    group_name="queries",
    description="The user's queries file (`queries:`), versioned by its content.",
)
def query_file(pretrace: PretraceResource) -> dg.DataVersion:
    return dg.DataVersion(pretrace.project().source("query_file"))


@dg.asset(deps=[query_file], group_name="queries", kinds={"parquet"})
def queries(context: dg.AssetExecutionContext, pretrace: PretraceResource) -> dg.MaterializeResult:
    """The queries to explain: id, kind, prompt, completion, answer (and intermediate results)."""
    started = time.monotonic()
    with computing(context, pretrace) as run:
        table = read_queries(run.project.config.queries)
        manifest = run.commit({"queries.parquet": table})
    kinds = dict(sorted(Counter(table.column("kind").to_pylist()).items()))
    return materialized(
        run,
        manifest,
        started,
        kinds=dg.MetadataValue.json(kinds),
        preview=table_preview(table, ["id", "kind", "prompt", "completion"]),
        **{"dagster/row_count": table.num_rows},
    )


@dg.asset(deps=[queries, "model"], group_name="queries", **GPU_ASSET, kinds={"pytorch", "parquet"}, retry_policy=RETRY)
def completions(context: dg.AssetExecutionContext, pretrace: PretraceResource) -> dg.MaterializeResult:
    """The queries as explained: the model's greedy completion where the file gives none (after
    `completion_instruction`), and for every query whether the model's greedy answer is correct."""
    started = time.monotonic()
    with computing(context, pretrace) as run:
        table = run.reader("queries").table("queries.parquet")
        done = complete_queries(
            run.model(),
            table,
            generation_settings(run.project.config),
            batch_size=run.project.config.batch_size,
            progress=progress_logger(context, table.num_rows, "greedy answers"),
        )
        manifest = run.commit({"completions.parquet": done})
    correct = done.column("correct").to_pylist()
    return materialized(
        run,
        manifest,
        started,
        generated=done.column("source").to_pylist().count(GENERATED),
        answered_correctly=correct.count(True),
        answered_incorrectly=correct.count(False),
        preview=table_preview(done, ["id", "kind", "source", "correct", "model_completion"]),
        **{"dagster/row_count": done.num_rows},
    )


@dg.asset(
    deps=[completions, ekfac_factors, "model"],
    group_name="queries",
    **GPU_ASSET,
    kinds={"pytorch", "safetensors"},
    retry_policy=RETRY,
)
def query_gradients(context: dg.AssetExecutionContext, pretrace: PretraceResource) -> dg.MaterializeResult:
    """EK-FAC-preconditioned gradients of each completion's loss, and its log-probability."""
    started = time.monotonic()
    with computing(context, pretrace) as run:
        config = run.project.config
        lm = run.model()
        table = run.reader("completions").table("completions.parquet")
        factors = run.reader("ekfac_factors").state()
        groups = run.layer_groups(lm)
        grads = compute_query_gradients(
            lm,
            factors,
            queries_from_table(table),
            projection=run.projection(lm, factors),
            rank=config.query_rank,
            batch_size=config.batch_size,
            groups=groups,
            progress=progress_logger(context, table.num_rows * groups, "query gradients"),
        )
        summary = table.select(
            ["id", "kind", "prompt", "completion", "completion_ids", "answer", "intermediates"]
        ).append_column("logprob", pa.array(grads.logprobs.tolist(), pa.float64()))
        manifest = run.commit({"query_gradients.safetensors": grads, "queries.parquet": summary})
    return materialized(
        run,
        manifest,
        started,
        queries=table.num_rows,
        projection=str(config.projection or "none"),
        query_rank=str(config.query_rank),
        log_probabilities=table_preview(summary, ["id", "kind", "completion", "logprob"], rows=20),
    )
