"""The analyses of Ruis et al. 2024 over merged per-shard influence statistics, and the report.

Modules, one job each (none imports Dagster):

- ``sections``: the registry, one module per section of the page (correlation, magnitude,
  concentration, answers, sources, top_documents, notes), each with its tables, reading,
  plots and HTML; the page, the figures, the readings and the exported tables iterate over it.
- ``section``: what a section provides.
- ``analysis``: the inputs every section reads (merged statistics, top lists, queries in report
  order) and each section's tables, computed once.
- ``config``: the report's options and the categories of query kinds.
- ``kinds``: the queries in report order and the groups every per-kind table has a row for.
- ``correlation``: group means of query-query correlations with bootstrap intervals and a
  permutation test.
- ``concentration``: shares of positive influence held by the top documents (exact top list
  plus log-binned histogram, with error bounds) and power-law fits of influence against rank.
- ``intervals``, ``formatting``, ``html``, ``plots``: bootstrap and Wilson intervals, numbers
  in prose, HTML pieces, PNG plotting helpers.
- ``page``: the self-contained HTML page.
- ``merge``: reading per-shard statistics from storage and merging them.
- ``build``: the :class:`Report` (figures, readings, HTML, files) and writing it.
- ``synthetic``: synthetic queries and scores with known structure, for previews and tests.

Usage without Dagster::

    from pretrace.report import ReportConfig, make_report, merge_shards
    from pretrace.statistics import summarize_shard

    shards = [summarize_shard(query_ids, doc_ids, scores, documents, queries) for ... in ...]
    report = make_report(*merge_shards(shards, k=50), queries, ReportConfig())
    open("report.html", "w").write(report.html)
"""

_EXPORTS = {
    "ReportConfig": "config", "analyze": "analysis", "Analysis": "analysis",
    "Report": "build", "build_report": "build", "make_report": "build", "write_report": "build",
    "ShardFiles": "merge", "merge_shards": "merge", "merge_stored": "merge",
}


def __getattr__(name: str):
    """Lazy exports, so that importing pretrace.report.synthetic does not load matplotlib."""
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
