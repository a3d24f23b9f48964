"""influence_report: the analyses of Ruis et al. 2024 over all scored shards (pretrace.report)."""


import time

import dagster as dg

from pretrace.errors import InputError
from pretrace.report.analysis import ReportConfig
from pretrace.report.build import ShardFiles, build_report
from resources.settings import InfluenceResource, StorageResource

from .common import artefact_metadata
from .partitions import shard_partitions
from .queries import QUERY_TABLE_KEY
from .scores import influence_scores, score_keys

REPORT_PREFIX = "influence_report"
REPORT_KEY = f"{REPORT_PREFIX}/report.html"


@dg.asset(deps=[influence_scores], group_name="report", kinds={"parquet", "html"}, code_version="2")
def influence_report(context: dg.AssetExecutionContext, storage: StorageResource,
                     influence: InfluenceResource) -> dg.MaterializeResult:
    """Correlations between queries, influence per nat, concentration, answers and sources in the
    top documents, and the top/bottom documents of every query: an HTML page plus Parquet tables,
    merged from each shard's statistics (scores are never reread)."""
    started = time.monotonic()
    store = storage.open()
    shards, unscored = [], []
    for shard in sorted(context.instance.get_dynamic_partitions(shard_partitions.name)):
        keys = score_keys(shard)
        if store.exists(keys["statistics"]) and store.exists(keys["top"]):
            shards.append(ShardFiles(shard, keys["statistics"], keys["top"]))
        else:
            unscored.append(shard)
    if unscored:
        context.log.warning(f"{len(unscored)} shard(s) not scored yet, left out: {', '.join(unscored[:10])}")
    if not shards:
        raise dg.Failure("no influence_scores partition is materialized yet")
    try:
        report, keys = build_report(store, shards, store.read_parquet(QUERY_TABLE_KEY),
                                    ReportConfig(k=influence.top_k, seed=influence.seed), prefix=REPORT_PREFIX)
    except InputError as exc:
        raise dg.Failure(str(exc)) from exc
    a = report.analysis
    md = {name: dg.MetadataValue.md(text) for name, text in
          {**report.markdown_tables(), **report.markdown_figures()}.items()}
    return dg.MaterializeResult(metadata={
        **artefact_metadata(store, REPORT_KEY, started=started),
        "report": dg.MetadataValue.path(store.url(REPORT_KEY)),
        "files": len(keys),
        "shards": len(shards),
        "documents": a.n_documents,
        "queries": a.queries.height,
        **md,
    })
