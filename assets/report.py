"""influence_report: the analyses of Ruis et al. 2024 over every current shard (pretrace.report)."""

import time

import dagster as dg

from pretrace.completions import with_model_answers
from pretrace.report.analysis import ReportConfig
from pretrace.report.build import make_report, merge_shards
from resources.pretrace import PretraceResource

from .common import RETRY, computing, materialized, report_link, table_metadata
from .evaluation import attribution_eval
from .scores import influence_scores

REPORT_FILE = "report.html"


@dg.asset(deps=[influence_scores, "completions", "query_gradients", attribution_eval], group_name="report", kinds={"parquet", "html"},
          retry_policy=RETRY)
def influence_report(context: dg.AssetExecutionContext, pretrace: PretraceResource) -> dg.MaterializeResult:
    """Correlations between queries, influence per nat, concentration, answers and sources in the
    top documents, and the top/bottom documents of every query: an HTML page plus Parquet tables,
    merged from each current shard's statistics (scores are never reread). Every current shard
    must be scored first; removed corpus files are not in it."""
    started = time.monotonic()
    with computing(context, pretrace) as run:
        config = run.project.config
        shards = run.project.shards
        readers = (run.reader("influence_scores", s) for s in shards)
        stats, top = merge_shards(((r.state("{shard}.stats.safetensors"), r.table("{shard}.top.parquet"))
                                   for r in readers), config.top_k)
        queries = with_model_answers(run.reader("query_gradients").table("queries.parquet"),
                                     run.reader("completions").table("completions.parquet"))
        check = run.reader("attribution_eval")
        attribution = {name: check.table(f"{name}.parquet") for name in ("summary", "retrieval_summary", "token_influence")}
        report = make_report(stats, top, queries, ReportConfig(k=config.top_k, seed=config.seed), shards=len(shards),
                             attribution=attribution)
        manifest = run.commit(report.outputs())
    tables = {name: table_metadata(list(df.iter_rows(named=True)), {c: str(t) for c, t in df.schema.items()})
              for name, df in report.headline_tables().items()}
    figures = {name: dg.MetadataValue.md(text) for name, text in report.markdown_figures().items()}
    return materialized(run, manifest, started, report=report_link(run.project.storage.url("influence_report", REPORT_FILE)),
                        shards=len(shards), documents=report.analysis.n_documents,
                        queries=report.analysis.queries.height, readings=dg.MetadataValue.md(report.markdown_tables()["readings"]),
                        **tables, **figures)
