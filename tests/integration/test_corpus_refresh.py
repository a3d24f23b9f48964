"""A file put into the watched corpus prefix of a running deployment flows through to the report."""

import json

import dagster as dg
import pytest

from tests.integration.conftest import DROPPED, SHARDS
from tests.integration.servers import wait_for

pytestmark = pytest.mark.integration


def partition_materializations(instance: dg.DagsterInstance, asset: str, partition: str, limit: int = 100) -> list:
    """The latest materializations of one partition of an asset, newest first."""
    return instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition]), limit=limit).records


def test_new_corpus_file_becomes_a_partition_a_run_and_a_report_update(dropped_shard, dagster_server, instance):
    run = dropped_shard
    assert run.status == dg.DagsterRunStatus.SUCCESS, run.status
    assert run.tags["pretrace/change"] == "new"
    assert DROPPED in instance.get_dynamic_partitions("shard")
    in_run = {asset: [r for r in partition_materializations(instance, asset, DROPPED) if r.run_id == run.run_id]
              for asset in ["corpus_shards", "document_gradients", "influence_scores"]}
    assert all(len(records) == 1 for records in in_run.values()), in_run

    def report_with_new_shard():
        (latest,) = instance.fetch_materializations(dg.AssetKey("influence_report"), limit=1).records or [None]
        shards = latest and latest.asset_materialization.metadata["shards"].value
        return latest if shards == len(SHARDS) + 1 else None

    report = wait_for(report_with_new_shard, 180, "influence_report to include the new shard")
    # Every chunk of every shard, the new one included, is in the report, built by automation.
    chunks = sum(partition_materializations(instance, "corpus_shards", shard, limit=1)[0]
                 .asset_materialization.metadata["chunks"].value for shard in [*SHARDS, DROPPED])
    assert report.asset_materialization.metadata["documents"].value == chunks
    assert "dagster/from_automation_condition" in instance.get_run_by_id(report.run_id).tags

    # The sensor's cursor now holds the file, and later ticks find nothing new to do.
    ended = instance.get_run_record_by_id(run.run_id).end_time

    def tick_after_the_run():
        tick = dagster_server.latest_tick("corpus_sensor")
        return tick if tick and tick["timestamp"] > ended else None

    tick = wait_for(tick_after_the_run, 60, "a corpus_sensor tick after the run")
    assert tick["status"] == "SKIPPED"
    assert tick["skipReason"].startswith(f"no new or changed corpus files among {len(SHARDS) + 1}"), tick
    assert DROPPED in json.loads(tick["cursor"])
