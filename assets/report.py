"""influence_report: the analyses of Ruis et al. 2024 over every current shard (pretrace.report)."""

import time

import dagster as dg

from pretrace.analyses.analysis import ReportConfig
from pretrace.analyses.completions import with_model_answers
from pretrace.evaluation.projection_check import accuracy_table
from pretrace.report.build import REPORT_PAGE, figure_file, make_report, merge_shards
from pretrace.resources.pretrace import PretraceResource

from .checks import check_specs
from .common import RETRY, computing, materialized, report_link, table_metadata
from .evaluation import attribution_eval
from .retrieval import reranked_scores
from .scores import influence_scores

REPORT_DEPS = [
    influence_scores.key,
    dg.AssetKey("completions"),
    dg.AssetKey("query_gradients"),
    attribution_eval.key,
    reranked_scores.key,
]
REPORT_KINDS = {"parquet", "html"}


@dg.asset(
    deps=REPORT_DEPS,
    group_name="report",
    kinds=REPORT_KINDS,
    retry_policy=RETRY,
    check_specs=check_specs("influence_report"),
)
def influence_report(context: dg.AssetExecutionContext, pretrace: PretraceResource) -> dg.MaterializeResult:
    """Correlations between queries, influence per nat, concentration, answers and sources in the
    top documents, and the top/bottom documents of every query: an HTML page plus Parquet tables,
    merged from each current shard's statistics (scores are never reread). Every current shard
    must be scored first; removed corpus files are not in it."""
    return report(context, pretrace)


def build_report_with_comparison() -> dg.AssetsDefinition:
    """The report of a model compared with others (`compare_models`): it reads the comparison too.
    Its own op, so that compared models' plain report copies do not clash with it."""

    @dg.multi_asset(
        name="influence_report_with_comparison",
        retry_policy=RETRY,
        check_specs=check_specs("influence_report"),
        specs=[
            dg.AssetSpec(
                influence_report.key,
                deps=[*REPORT_DEPS, dg.AssetKey("model_comparison")],
                group_name="report",
                kinds=REPORT_KINDS,
                description=influence_report.descriptions_by_key[influence_report.key],
            )
        ],
    )
    def influence_report_with_comparison(
        context: dg.AssetExecutionContext, pretrace: PretraceResource
    ) -> dg.MaterializeResult:
        return report(context, pretrace)

    return influence_report_with_comparison


def report(context: dg.AssetExecutionContext, pretrace: PretraceResource) -> dg.MaterializeResult:
    """Build and commit the report, with the comparison of compared models when there is one."""
    started = time.monotonic()
    with computing(context, pretrace) as run:
        config = run.project.config
        shards = run.project.shards
        readers = [run.reader("influence_scores", s) for s in shards]
        stats, top = merge_shards(
            ((r.state("{shard}.stats.safetensors"), r.table("{shard}.top.parquet")) for r in readers), config.top_k
        )
        accuracy = accuracy_table((s, r.json("{shard}.accuracy.json")) for s, r in zip(shards, readers))
        queries = with_model_answers(
            run.reader("query_gradients").table("queries.parquet"),
            run.reader("completions").table("completions.parquet"),
        )
        check = run.reader("attribution_eval")
        attribution = {
            name: check.table(f"{name}.parquet")
            for name in (
                "summary",
                "retrieval_summary",
                "token_influence",
                "gains",
                "retrieval",
                "rankings",
                "evidence",
            )
        }
        comparison = (
            run.reader("model_comparison").table("comparison.parquet")
            if "model_comparison" in run.project.graph
            else None
        )
        reranked = run.reader("reranked_scores").table("reranked.parquet")
        built = make_report(
            stats,
            top,
            queries,
            ReportConfig(k=config.top_k, top_fraction=config.report_top_fraction, seed=config.seed),
            shards=len(shards),
            attribution=attribution,
            comparison=comparison,
            accuracy=accuracy,
            reranked=reranked,
            left_out=config.exclude_files,
        )
        manifest = run.commit(built.outputs())
    tables = {
        name: table_metadata(list(df.iter_rows(named=True)), {c: str(t) for c, t in df.schema.items()})
        for name, df in built.headline_tables().items()
    }
    model = run.project.name
    figures = {f"plot_{name}": report_link(model, figure_file(name)) for name in built.figures}
    return materialized(
        run,
        manifest,
        started,
        report=report_link(model, REPORT_PAGE),
        report_path=dg.MetadataValue.path(run.project.storage.url("influence_report", REPORT_PAGE)),
        shards=len(shards),
        documents=built.analysis.n_documents,
        queries=built.analysis.queries.height,
        readings=dg.MetadataValue.md(built.markdown_tables()["readings"]),
        **tables,
        **figures,
    )
