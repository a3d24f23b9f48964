"""What the UI shows of `pretrace run` and of the refresh schedule, through the webserver's
GraphQL API: a `pretrace run` is one entry of the Runs page (one asset backfill), tagged with its
project, and the schedule's tick launches the run of a file added to the corpus.
(The sensor's partition requests: test_corpus_refresh.py; a changed setting named as the reason
an asset is stale without a reload: test_ui_browser.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import dagster as dg
import pytest

from pretrace.store.storage import Storage
from pretrace.testing.project import write_corpus_file
from tests.integration.conftest import ROOT
from tests.integration.servers import wait_for

pytestmark = pytest.mark.integration

ADDED = "part-e.jsonl"
SENSOR_ID = "query($selector: SensorSelector!) { sensorOrError(sensorSelector: $selector) { ... on Sensor { id } } }"
STOP_SENSOR = "mutation($id: String!) { stopSensor(id: $id) { __typename } }"
RESET_SENSOR = "mutation($selector: SensorSelector!) { resetSensor(sensorSelector: $selector) { __typename } }"
START_SCHEDULE = """
mutation($selector: ScheduleSelector!) {
  startSchedule(scheduleSelector: $selector) { __typename ... on PythonError { message } }
}"""
RESET_SCHEDULE = """
mutation($selector: ScheduleSelector!) {
  resetSchedule(scheduleSelector: $selector) { __typename ... on PythonError { message } }
}"""
SCHEDULE_TICKS = """
query($selector: ScheduleSelector!) {
  scheduleOrError(scheduleSelector: $selector) {
    ... on Schedule { scheduleState { ticks(limit: 10) { status timestamp runIds skipReason } } }
  }
}"""
RUNS_FEED = """
query($limit: Int!) {
  runsFeedOrError(limit: $limit, view: ROOTS) {
    ... on RunsFeedConnection { results {
      __typename id runStatus tags { key value }
      ... on PartitionBackfill { title }
    } }
  }
}"""


def _stop_sensors(server) -> dict[str, dict]:
    """Stop the corpus sensor and automation, so that what `pretrace run` and the schedule do here
    is theirs alone; their selectors, to reset them to their default (running) after."""
    selectors = {}
    for sensor in ("corpus_sensor", "pretrace_automation"):
        selectors[sensor] = {**server.repository(), "sensorName": sensor}
        sensor_id = server.graphql(SENSOR_ID, {"selector": selectors[sensor]})["sensorOrError"]["id"]
        server.graphql(STOP_SENSOR, {"id": sensor_id})
    for sensor in selectors:  # a tick in flight still requests runs: let it end
        wait_for(lambda s=sensor: (server.latest_tick(s) or {}).get("status") != "STARTED", 60, f"{sensor}'s tick", 0.5)
    return selectors


def _runs_feed(server, limit: int = 50) -> list[dict]:
    return server.graphql(RUNS_FEED, {"limit": limit})["runsFeedOrError"]["results"]


def _tags(entry: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in entry["tags"]}


def test_pretrace_run_is_one_entry_of_the_runs_page_and_the_schedule_launches_a_new_files_run(
    dagster_server, ops_project, instance
):
    selectors = _stop_sensors(dagster_server)
    schedule = {**dagster_server.repository(), "scheduleName": "corpus_refresh_schedule"}
    try:
        # A deleted report: `pretrace run` recomputes it, as one entry of the Runs page, a
        # backfill tagged with the project, holding its runs.
        Storage(ops_project["storage"]).delete("influence_report/manifest.json")
        before = {entry["id"] for entry in _runs_feed(dagster_server)}
        result = subprocess.run(
            [sys.executable, "-m", "pretrace.pipeline.cli", "run", "--config", str(ops_project["config"])],
            cwd=ROOT,
            env={**os.environ, "DAGSTER_HOME": str(ops_project["home"])},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert "[pretrace] materializing influence_report (missing" in result.stdout
        hint = f"browse the runs and metadata with: pretrace ui --config {ops_project['config']}"
        assert result.stdout.rstrip().endswith(hint)  # the UI of this project, not the demo
        (backfill,) = [entry for entry in _runs_feed(dagster_server) if entry["id"] not in before]
        assert backfill["__typename"] == "PartitionBackfill" and backfill["runStatus"] == "SUCCESS"
        assert _tags(backfill)["pretrace/storage"] == ops_project["storage"]
        assert backfill["title"] == f"pretrace run {ops_project['storage']}"
        runs = instance.get_runs(dg.RunsFilter(tags={"dagster/backfill": backfill["id"]}))
        assert runs and {(r.tags["pretrace/storage"], r.status) for r in runs} == {
            (ops_project["storage"], dg.DagsterRunStatus.SUCCESS)
        }

        # A file added to the corpus: the schedule's next tick (every minute here) launches the
        # run of its tokens, gradients and scores.
        started = dagster_server.graphql(START_SCHEDULE, {"selector": schedule})["startSchedule"]
        assert started["__typename"] == "ScheduleStateResult", started
        added_at = time.time()
        staged = write_corpus_file(ops_project["root"] / ADDED, 6, 5, "e")
        Storage(ops_project["corpus"]).write_bytes(ADDED, staged.read_bytes())

        def launched():
            ticks = dagster_server.graphql(SCHEDULE_TICKS, {"selector": schedule})["scheduleOrError"]
            ticks = [t for t in ticks["scheduleState"]["ticks"] if t["timestamp"] > added_at and t["runIds"]]
            return ticks[0] if ticks else None

        tick = wait_for(launched, 150, "a corpus_refresh_schedule tick (every minute) that launches a run")
        assert tick["status"] == "SUCCESS"
        (run_id,) = tick["runIds"]
        run = instance.get_run_by_id(run_id)
        assert run.tags["dagster/partition"] == ADDED and run.job_name == "shard_job"
        assert {k.to_user_string() for k in run.asset_selection} == {
            "corpus_shards",
            "document_gradients",
            "influence_scores",
        }
        assert ADDED in instance.get_dynamic_partitions("shard")
    finally:
        dagster_server.graphql(RESET_SCHEDULE, {"selector": schedule})
        for selector in selectors.values():  # automation carries the new file on (the run it launched included)
            dagster_server.graphql(RESET_SENSOR, {"selector": selector})
