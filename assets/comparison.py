"""model_comparison: this model's influence against each compared model's (`compare_models`)."""

import time

import dagster as dg

from pretrace.analyses.model_comparison import compare_models
from pretrace.resources.pretrace import PretraceResource

from .common import RETRY, computing, materialized, table_preview


def build_model_comparison(compared: list[str]) -> dg.AssetsDefinition:
    """The comparison asset, downstream of this model's and every compared model's scores."""

    @dg.asset(
        deps=["influence_scores", "completions", *(dg.AssetKey([m, "influence_scores"]) for m in compared)],
        group_name="report",
        kinds={"parquet"},
        retry_policy=RETRY,
    )
    def model_comparison(context: dg.AssetExecutionContext, pretrace: PretraceResource) -> dg.MaterializeResult:
        """Per shared query and compared model: Pearson correlation of the two models' scores over
        the corpus, overlap of their top and bottom k documents, and how much stronger the
        compared model's extremes are (pretrace.analyses.model_comparison). Streams one shard at a time."""
        started = time.monotonic()
        with computing(context, pretrace) as run:
            query_ids = run.reader("completions").table("completions.parquet", ["id"]).column("id").to_pylist()
            shards = (
                (
                    s,
                    run.reader("influence_scores", s).table("{shard}.parquet"),
                    {m: run.reader("influence_scores", s, m).table("{shard}.parquet") for m in compared},
                )
                for s in run.project.shards
            )
            table = compare_models(query_ids, shards, run.project.config.top_k)
            manifest = run.commit({"comparison.parquet": table})
        return materialized(
            run,
            manifest,
            started,
            models=dg.MetadataValue.json(compared),
            preview=table_preview(
                table, ["query_id", "model", "pearson", "top_overlap", "top_multiplier", "bottom_multiplier"], rows=20
            ),
        )

    return model_comparison
