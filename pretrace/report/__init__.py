"""The analyses of Ruis et al. 2024 over merged per-shard influence statistics, and the report.

Modules, one job each (none imports Dagster):

- ``answers``: whole-token search of answers and intermediate results in document text.
- ``concentration``: shares of positive influence held by the top documents (exact top list
  plus log-binned histogram, with error bounds) and power-law fits of influence against rank.
- ``correlation``: group means of query-query correlations with bootstrap intervals and a
  permutation test.
- ``analysis``: every table of the report from merged statistics, top lists and the queries.
- ``narrative``: plain-language readings generated from those tables.
- ``figures``: the plots, as PNG bytes.
- ``html``: the self-contained HTML page.
- ``build``: reading per-shard statistics from storage, merging, writing the report.
- ``synthetic``: synthetic queries and scores with known structure, for previews and tests.

Usage without Dagster::

    from pretrace.report import ReportConfig, make_report, merge_shards
    from pretrace.statistics import summarize_shard

    shards = [summarize_shard(query_ids, doc_ids, scores, documents, queries) for ... in ...]
    report = make_report(*merge_shards(shards, k=50), queries, ReportConfig())
    open("report.html", "w").write(report.html)
"""

_EXPORTS = {
    "ReportConfig": "analysis", "analyze": "analysis", "Analysis": "analysis",
    "Report": "build", "ShardFiles": "build", "build_report": "build", "make_report": "build",
    "merge_shards": "build", "merge_stored": "build", "write_report": "build",
}


def __getattr__(name: str):
    """Lazy exports, so that importing pretrace.report.answers does not load matplotlib."""
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
