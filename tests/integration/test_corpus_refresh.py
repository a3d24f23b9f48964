"""A file put into the watched corpus prefix of a running deployment flows through to the report:
the corpus sensor registers and observes it, the policy-driven automation computes its shard's
tokens, gradients and scores once each, then rebuilds the report once."""

import json

import dagster as dg
import pytest

from tests.integration.conftest import DROPPED, SHARDS
from tests.integration.servers import finished_run, wait_for

pytestmark = pytest.mark.integration


def partition_materializations(instance: dg.DagsterInstance, asset: str, partition: str, limit: int = 100) -> list:
    """The latest materializations of one partition of an asset, newest first."""
    return instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition]), limit=limit
    ).records


def test_new_corpus_file_becomes_a_partition_and_reaches_the_report_once(dropped_shard, dagster_server, instance):
    report = dropped_shard
    assert DROPPED in instance.get_dynamic_partitions("shard")
    (observation,) = instance.fetch_observations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("corpus_files"), asset_partitions=[DROPPED]), limit=10
    ).records
    assert observation.asset_observation.tags["dagster/data_version"].startswith("etag:")
    # The tick that found the file says so in the UI's tick history: the partition it added, and
    # what it found (Dagster calls a tick that requests no run skipped, whatever else it did).
    (found,) = [t for t in dagster_server.ticks("corpus_sensor") if t["dynamicPartitionsRequestResults"]]
    assert f"new shards: {DROPPED}" in found["skipReason"]
    assert found["dynamicPartitionsRequestResults"] == [
        {"partitionsDefName": "shard", "partitionKeys": [DROPPED], "type": "ADD_PARTITIONS"}
    ]
    shard_runs = set()
    for asset in ["corpus_shards", "document_gradients", "influence_scores"]:
        (record,) = partition_materializations(instance, asset, DROPPED)  # exactly once
        assert "dagster/from_automation_condition" in instance.get_run_by_id(record.run_id).tags, asset
        shard_runs.add(record.run_id)
    assert len(shard_runs) == 1  # the shard's three artefacts are one run
    assert not partition_materializations(instance, "ekfac_covariances", DROPPED)  # not a fit shard
    # Every chunk of every shard, the new one included, is in the report, built by automation.
    chunks = sum(
        partition_materializations(instance, "corpus_shards", shard, limit=1)[0]
        .asset_materialization.metadata["chunks"]
        .value
        for shard in [*SHARDS, DROPPED]
    )
    assert report.asset_materialization.metadata["documents"].value == chunks
    assert "dagster/from_automation_condition" in instance.get_run_by_id(report.run_id).tags

    # The sensor's cursor now holds the file, and later ticks find nothing new.
    run = wait_for(lambda: finished_run(instance, dg.RunsFilter(run_ids=[report.run_id])), 120, "the report's run")
    assert run.status == dg.DagsterRunStatus.SUCCESS  # its checks included
    ended = instance.get_run_record_by_id(report.run_id).end_time

    def tick_after_the_report():
        tick = dagster_server.latest_tick("corpus_sensor")
        return tick if tick and tick["timestamp"] > ended and tick["status"] != "STARTED" else None

    tick = wait_for(tick_after_the_report, 60, "a finished corpus_sensor tick after the report")
    assert tick["status"] == "SKIPPED"
    assert tick["skipReason"].startswith("no new or changed inputs among"), tick
    assert f"corpus_files[{DROPPED}]" in json.loads(tick["cursor"])
    reports = instance.fetch_materializations(dg.AssetKey("influence_report"), limit=100).records
    assert sum(r.asset_materialization.metadata["shards"].value == len(SHARDS) + 1 for r in reports) == 1
