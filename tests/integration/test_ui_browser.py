"""The Dagster web UI in a real browser: the asset graph, Materialize and its run, the shard
partitions and the report's metadata."""

import re
import time

import dagster as dg
import pytest

from tests.integration.browser import chromium_page, needs_chromium
from tests.integration.conftest import SHARDS
from tests.integration.servers import wait_for

pytestmark = [
    pytest.mark.integration,
    needs_chromium,
]


def materializations(instance: dg.DagsterInstance, asset: str) -> int:
    return len(instance.fetch_materializations(dg.AssetKey(asset), limit=1000).records)


def test_materialize_an_asset_from_the_ui(dagster_server, instance, tmp_path):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import expect

    before = materializations(instance, "queries")
    with chromium_page() as page:
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
        wait_for(
            lambda: materializations(instance, "queries") > before,
            120,
            "the run launched from the UI to materialize `queries`",
            every=1,
        )
        run_id = instance.fetch_materializations(dg.AssetKey("queries"), limit=1).records[0].run_id
        page.goto(f"{dagster_server.url}/runs/{run_id}", wait_until="networkidle")
        expect(page.get_by_text("Success").first).to_be_visible(timeout=60_000)  # the run's own page
        page.screenshot(path=str(tmp_path / "run.png"), full_page=True)
    print(f"screenshots in {tmp_path}")


def test_the_ui_shows_shard_partitions_and_report_metadata(dagster_server, tmp_path):
    from playwright.sync_api import expect

    with chromium_page() as page:
        page.goto(f"{dagster_server.url}/assets/document_gradients?view=partitions", wait_until="networkidle")
        for shard in SHARDS:
            expect(page.get_by_text(shard, exact=True).first).to_be_visible(timeout=60_000)
        page.screenshot(path=str(tmp_path / "partitions.png"), full_page=True)

        page.goto(f"{dagster_server.url}/assets/influence_report?view=events", wait_until="networkidle")
        for entry in ("report", "shards", "documents", "correlation"):
            expect(page.get_by_text(entry, exact=True).first).to_be_visible(timeout=60_000)
        page.screenshot(path=str(tmp_path / "report-metadata.png"), full_page=True)
    print(f"screenshots in {tmp_path}")


STALENESS = """
query($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) { ... on AssetNode { staleStatus staleCauses { reason } } }
}"""
SENSOR_ID = "query($selector: SensorSelector!) { sensorOrError(sensorSelector: $selector) { ... on Sensor { id } } }"
STOP_SENSOR = "mutation($id: String!) { stopSensor(id: $id) { __typename } }"
RESET_SENSOR = "mutation($selector: SensorSelector!) { resetSensor(sensorSelector: $selector) { __typename } }"
RELOAD = """
mutation($name: String!) {
  reloadRepositoryLocation(repositoryLocationName: $name) {
    __typename ... on WorkspaceLocationEntry { locationOrLoadError { __typename } }
  }
}"""


OBSERVATIONS = """
query($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) { ... on AssetNode { assetObservations(limit: 5) {
    timestamp metadataEntries { label ... on TextMetadataEntry { text } }
  } } }
}"""


def settings_changed(server, asset: str, after: float) -> str | None:
    """The `settings changed` entry of the asset's latest observation since `after`: what its
    page's events say."""
    for event in server.graphql(OBSERVATIONS, {"key": {"path": [asset]}})["assetNodeOrError"]["assetObservations"]:
        if float(event["timestamp"]) / 1000 > after:
            for entry in event["metadataEntries"]:
                if entry["label"] == "settings changed":
                    return entry["text"]
    return None


def code_version_changed(server, asset: str) -> dict | None:
    """The asset's staleness when it is stale by its own code version (a reloaded setting)."""
    state = staleness(server, asset)
    return state if any("code version" in c["reason"].lower() for c in state["staleCauses"]) else None


def staleness(server, asset: str) -> dict:
    return server.graphql(STALENESS, {"key": {"path": [asset]}})["assetNodeOrError"]


def reload_location(server) -> None:
    result = server.graphql(RELOAD, {"name": server.repository()["repositoryLocationName"]})
    assert result["reloadRepositoryLocation"]["__typename"] == "WorkspaceLocationEntry", result


def test_a_changed_setting_shows_stale_and_materializing_it_from_the_ui_makes_it_current(
    dagster_server, ops_project, instance, tmp_path
):
    """The UI's stale marker is the recompute policy's: `damping` changes ekfac_factors' code
    version. Without a manual reload: the corpus sensor's next tick names the setting with its
    old and new value, on the tick and in the asset's events, and reloads the code location."""
    from playwright.sync_api import expect

    from pretrace.config import load_config
    from pretrace.project.provenance import Project
    from pretrace.testing.project import edit_config

    config_path = ops_project["config"]
    original = config_path.read_text()
    selector = {**dagster_server.repository(), "sensorName": "pretrace_automation"}
    sensor_id = dagster_server.graphql(SENSOR_ID, {"selector": selector})["sensorOrError"]["id"]
    dagster_server.graphql(STOP_SENSOR, {"id": sensor_id})  # the user, not automation, materializes it here
    try:
        assert staleness(dagster_server, "ekfac_factors")["staleStatus"] == "FRESH"
        edited = time.time()
        edit_config(config_path, damping=0.5)
        reason = wait_for(lambda: settings_changed(dagster_server, "ekfac_factors", edited), 60, "the tick naming it")
        assert reason.startswith("`damping` ") and reason.endswith(
            f" -> 0.5 in {config_path} (the code location reloads to compute with them)"
        ), reason
        ticks = dagster_server.ticks("corpus_sensor", limit=30)  # newest first
        (naming,) = [t for t in ticks if "pretrace.yaml changed: `damping` " in (t["skipReason"] or "")]
        assert not [t for t in ticks if edited < t["timestamp"] < naming["timestamp"]], "not the next tick"
        stale = wait_for(lambda: code_version_changed(dagster_server, "ekfac_factors"), 120, "the location's reload")
        assert stale["staleStatus"] == "STALE"
        assert Project(load_config(config_path)).status("ekfac_factors").state == "stale"
        before = materializations(instance, "ekfac_factors")
        with chromium_page() as page:
            page.goto(f"{dagster_server.url}/assets/ekfac_factors", wait_until="networkidle")
            # Dagster's UI calls a stale asset "Unsynced".
            expect(page.get_by_role("button", name=re.compile(r"^Unsynced"))).to_be_visible(timeout=60_000)
            page.screenshot(path=str(tmp_path / "stale.png"), full_page=True)
            page.get_by_role("button", name=re.compile(r"^(\S+ )?Materialize$")).first.click()
            wait_for(
                lambda: materializations(instance, "ekfac_factors") > before,
                180,
                "the run launched from the UI to materialize ekfac_factors",
                every=1,
            )
            page.reload(wait_until="networkidle")
            expect(page.get_by_role("button", name=re.compile(r"^Unsynced"))).to_have_count(0, timeout=60_000)
            page.screenshot(path=str(tmp_path / "current.png"), full_page=True)
        wait_for(
            lambda: staleness(dagster_server, "ekfac_factors")["staleStatus"] == "FRESH",
            60,
            "ekfac_factors to show fresh",
        )
        assert Project(load_config(config_path)).status("ekfac_factors").current
    finally:
        config_path.write_text(original)
        reload_location(dagster_server)
        dagster_server.graphql(RESET_SENSOR, {"selector": selector})
