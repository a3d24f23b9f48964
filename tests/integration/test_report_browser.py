"""The HTML report renders in a real headless Chromium: every section and every plot is there."""

import os
import shutil
from pathlib import Path

import pyarrow as pa
import pytest

from pretrace.analyses.analysis import ReportConfig
from pretrace.analyses.model_comparison import COMPARISON_SCHEMA
from pretrace.influence.token_influence import TOKEN_SCHEMA
from pretrace.report.build import build_report
from pretrace.report.sections import CONTENTS as SECTIONS
from pretrace.report.sections import FIGURES
from pretrace.store.storage import Storage
from pretrace.testing.synthetic_shards import synthetic_queries, write_synthetic_shards
from tests.integration.browser import chromium_page, needs_chromium

pytestmark = [
    pytest.mark.integration,
    needs_chromium,
]


@pytest.fixture(scope="module")
def report_path(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    store = Storage(str(root))
    queries = synthetic_queries(20, seed=2)
    files = write_synthetic_shards(store, queries, 2000, range(3), k=20, seed=2, name="shard-{}")
    # the model wrote every other completion and answers a third of the queries correctly
    ids = queries.column("id").to_pylist()
    answered = [None if a is None else i % 3 == 0 for i, a in enumerate(queries.column("answer").to_pylist())]
    queries = (
        queries.append_column("source", pa.array(["generated", "given"] * 10))
        .append_column("model_completion", queries.column("completion"))
        .append_column("correct", pa.array(answered, pa.bool_()))
    )
    comparison = pa.Table.from_pylist(
        [
            {
                "query_id": q,
                "model": "small",
                "documents": 6000,
                "pearson": 0.1 + 0.04 * i,
                "k": 20,
                "top_overlap": i % 5,
                "bottom_overlap": 1,
                "top_multiplier": 2.0,
                "bottom_multiplier": 0.5,
            }
            for i, q in enumerate(ids)
        ],
        schema=COMPARISON_SCHEMA,
    )
    first = queries.column("id")[0].as_py()
    tokens = pa.table(
        {
            "query_id": [first],
            "side": ["top"],
            "rank": [1],
            "shard": ["shard-0"],
            "doc_id": ["d"],
            "score": [3.0],
            "token_sum": [3.0],
            "tokens": [["The", " answer", " <is>"]],
            "terms": [[2.5, 1.0, -0.5]],
        },
        schema=TOKEN_SCHEMA,
    )
    build_report(
        store,
        files,
        queries,
        ReportConfig(k=20, bootstrap=300, permutations=200),
        attribution={"token_influence": tokens},
        comparison=comparison,
    )
    return root / "influence_report" / "report.html"


def test_report_renders_every_section_and_plot_offline(report_path, tmp_path):
    external = []
    with chromium_page(1200, 900) as page:
        page.on("request", lambda r: external.append(r.url) if not r.url.startswith(("file:", "data:")) else None)
        page.goto(report_path.as_uri(), wait_until="load")
        assert page.title() == "pretrace influence report"

        for section_id, title in SECTIONS:
            section = page.locator(f"section#{section_id}")
            assert section.count() == 1, section_id
            assert section.locator("h2").inner_text() == title
            if section_id != "notes":
                assert len(section.locator(".reading").inner_text()) > 40, section_id

        images = page.evaluate("""() => Array.from(document.images).map(i => ({
            name: i.dataset.figure, complete: i.complete, width: i.naturalWidth, height: i.naturalHeight,
            section: i.closest('section').id}))""")
        assert sorted(i["name"] for i in images) == sorted(FIGURES)
        for image in images:
            assert image["complete"] and image["width"] > 100 and image["height"] > 100, image
        assert {i["section"] for i in images} == {"correlation", "magnitude", "concentration", "answers", "sources"}

        # the per-query document lists open and hold the shown rows, top and bottom
        details = page.locator("#top-documents details")
        assert details.count() == 20
        details.first.locator("summary").click()
        assert details.first.locator("tbody tr").count() == 2 * 10
        assert details.first.locator("tbody tr").first.is_visible()
        # the token-level view of the shown document: one shaded span per token, the value on hover
        spans = details.first.locator(".tokens span")
        assert spans.count() == 3 and spans.nth(2).inner_text() == " <is>" and spans.first.is_visible()
        assert spans.first.get_attribute("title") == "2.5"

        # Ruis et al.'s definitions, each in its section: per-nat curves, the top-500 fit and its
        # t-test, the step-by-step answer search, sources at several k
        assert "As Ruis et al. (2024) define influence per nat" in page.locator("section#magnitude").inner_text()
        assert "Welch t" in page.locator("section#concentration").inner_text()
        assert "all steps in one document" in page.locator("section#answers").inner_text()
        sources = page.locator("section#sources").inner_text()
        assert all(f"{side} {k}" in sources for side in ("top", "bottom") for k in (50, 500, 5000))
        # the model's own answers, and the slope test on the ones it gets right
        completions = page.locator("section#completions").inner_text()
        assert "The model wrote 10 of the 20 completions" in completions and "answered correctly" in completions
        assert "on the queries the model answers correctly" in page.locator("section#concentration").inner_text()
        # a second model compared on the same queries
        models = page.locator("section#models")
        assert "Against model small" in models.inner_text() and models.locator("tbody tr").count() >= 4

        shot = tmp_path / "report.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 50_000
    assert external == [], f"the report fetched external resources: {external[:5]}"
    target = os.environ.get("PRETRACE_SCREENSHOT_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(target) / "report.png")
    print(f"screenshot: {shot}")
