"""Operations against real servers: PostgreSQL instance storage and `dagster dev` over GraphQL."""

from __future__ import annotations

import dagster as dg
import pytest

from tests.integration.conftest import SHARDS
from tests.integration.servers import wait_for

pytestmark = pytest.mark.integration

LAUNCH_BACKFILL = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message stack }
    ... on InvalidSubsetError { message }
    ... on UnauthorizedError { message }
  }
}"""
BACKFILL_STATUS = """
query($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill { status }
  }
}"""


def step_windows(instance, run_ids, step: str):
    """(start, end) of each execution of `step` in the given runs, from the event log."""
    windows = []
    for run_id in run_ids:
        events = {
            e.dagster_event_type: e.timestamp
            for e in (r.event_log_entry for r in instance.get_records_for_run(run_id).records)
            if e.dagster_event
            and e.dagster_event.step_key == step
            and e.dagster_event_type in (dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS)
        }
        windows.append((events[dg.DagsterEventType.STEP_START], events[dg.DagsterEventType.STEP_SUCCESS]))
    return windows


def test_backfill_over_three_shards_materializes_each_partition_once_within_the_gpu_pool(
    dagster_server, instance, step_of
):
    params = {
        "partitionNames": SHARDS,
        "fromFailure": False,
        "assetSelection": [{"path": ["document_gradients"]}, {"path": ["influence_scores"]}],
    }
    launched = dagster_server.graphql(LAUNCH_BACKFILL, {"params": params})["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    backfill_id = launched["backfillId"]

    def finished():
        status = dagster_server.graphql(BACKFILL_STATUS, {"id": backfill_id})["partitionBackfillOrError"]["status"]
        return status if status not in ("REQUESTED",) else None

    assert wait_for(finished, 300, f"backfill {backfill_id}") in ("COMPLETED", "COMPLETED_SUCCESS")
    runs = instance.get_runs(dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
    assert runs and all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
    # The backfill policy gives every shard its own run, so a failed shard is retried alone.
    ranges = [
        (r.tags["dagster/asset_partition_range_start"], r.tags["dagster/asset_partition_range_end"]) for r in runs
    ]
    assert all(first == last for first, last in ranges) and {first for first, _ in ranges} == set(SHARDS), ranges
    run_ids = {r.run_id for r in runs}
    for asset in ["document_gradients", "influence_scores"]:
        records = instance.fetch_materializations(dg.AssetKey(asset), limit=1000).records
        partitions = sorted(r.asset_materialization.partition for r in records if r.run_id in run_ids)
        assert partitions == SHARDS, asset  # each exactly once
    # The gpu pool allows one step at a time: document_gradients steps never overlap.
    windows = sorted(
        w
        for w in step_windows(
            instance,
            [r.run_id for r in runs if "document_gradients" in str(r.asset_selection)],
            step_of("document_gradients"),
        )
    )
    assert len(windows) == len(SHARDS)
    for (_, end), (start, _) in zip(windows, windows[1:]):
        assert start >= end - 1e-3, windows
