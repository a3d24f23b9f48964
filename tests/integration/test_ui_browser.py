"""The Dagster web UI in a real browser: find the asset graph, press Materialize, see success."""

import re
import time

import dagster as dg
import pytest

from tests.integration.browser import CHROMIUM, CHROMIUM_ARGS, needs_chromium

pytestmark = [
    pytest.mark.integration,
    needs_chromium,
]


def materializations(instance, asset):
    return len(instance.fetch_materializations(dg.AssetKey(asset), limit=1000).records)


def test_materialize_an_asset_from_the_ui(dagster_server, instance, tmp_path):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import expect, sync_playwright

    before = materializations(instance, "queries")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(f"{dagster_server.url}/asset-groups", wait_until="networkidle")
        expect(page.get_by_text("Global asset lineage")).to_be_visible(timeout=60_000)
        for group in ("corpus", "model", "ekfac", "queries", "influence", "report"):  # the graph's groups
            expect(page.get_by_role("button", name=f"asset_group {group} {group}")).to_be_visible()
        page.screenshot(path=str(tmp_path / "asset-graph.png"))

        page.goto(f"{dagster_server.url}/assets/queries", wait_until="networkidle")
        page.screenshot(path=str(tmp_path / "asset-page.png"))
        try:  # the first-visit community dialog, when it shows, covers the page
            page.get_by_role("button", name="Skip", exact=True).click(timeout=5_000)
        except PlaywrightTimeout:
            pass
        # Accessible names carry the icon's name first ("materialization Materialize").
        page.get_by_role("button", name=re.compile(r"^(\S+ )?Materialize$")).first.click()
        deadline = time.monotonic() + 120
        while materializations(instance, "queries") == before:
            assert time.monotonic() < deadline, "the run launched from the UI did not materialize `queries`"
            time.sleep(1)
        run_id = instance.fetch_materializations(dg.AssetKey("queries"), limit=1).records[0].run_id
        page.goto(f"{dagster_server.url}/runs/{run_id}", wait_until="networkidle")
        expect(page.get_by_text("Success").first).to_be_visible(timeout=60_000)  # the run's own page
        page.screenshot(path=str(tmp_path / "run.png"), full_page=True)
        browser.close()
    print(f"screenshots in {tmp_path}")
