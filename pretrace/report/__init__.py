"""The report: rendering the analyses (pretrace.analyses) as an HTML page, figures and tables.
Imports any pretrace package below it (analyses, evaluation, project, ...); computes no estimate itself.

Modules, one job each:

- ``sections``: one module per section of the page (correlation, magnitude, concentration,
  answers, sources, top_documents, notes, ...), each with its tables, reading, plots and HTML.
- ``section``: what a section provides.
- ``formatting``, ``html``, ``plots``: numbers in prose, HTML pieces, PNG plotting helpers.
- ``page``: the self-contained HTML page.
- ``build``: the :class:`~pretrace.report.build.Report` (figures, readings, HTML, files) and
  writing it.
- ``serve``: the committed report over HTTP, read-only, verified against its manifest
  (`pretrace report`, and `pretrace ui` beside the Dagster UI).

Usage without Dagster::

    from pretrace.analyses.merge import merge_shards
    from pretrace.analyses.report_config import ReportConfig
    from pretrace.analyses.shard_statistics import summarize_shard
    from pretrace.report.build import make_report

    shards = [summarize_shard(query_ids, doc_ids, scores, documents, queries) for ... in ...]
    report = make_report(*merge_shards(shards, k=50), queries, ReportConfig())
    open("report.html", "w").write(report.html)
"""
