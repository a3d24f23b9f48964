"""A file dropped into the corpus folder of a running deployment flows through to the report."""

import dagster as dg
import pytest

from tests.integration.conftest import DROPPED, SHARDS
from tests.integration.servers import wait_for

pytestmark = pytest.mark.integration


def materialization_in_run(instance, asset: str, partition: str, run_id: str):
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition]), limit=100).records
    return next((r for r in records if r.run_id == run_id), None)


def latest_metadata(instance, asset: str, partition: str) -> dict:
    (record,) = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition]), limit=1).records
    return record.asset_materialization.metadata


def test_new_corpus_file_becomes_a_partition_a_run_and_a_report_update(dropped_shard, instance):
    run = dropped_shard
    assert run.status == dg.DagsterRunStatus.SUCCESS, run.status
    assert run.tags["pretrace/change"] == "new"
    assert DROPPED in instance.get_dynamic_partitions("shard")
    for asset in ["corpus_shards", "document_gradients", "influence_scores"]:
        assert materialization_in_run(instance, asset, DROPPED, run.run_id), f"{asset} [{DROPPED}] not in the run"
    scored_at = materialization_in_run(instance, "influence_scores", DROPPED, run.run_id).timestamp

    def report_with_new_shard():
        (latest,) = instance.fetch_materializations(dg.AssetKey("influence_report"), limit=1).records or [None]
        shards = latest and latest.asset_materialization.metadata["shards"].value
        return latest if shards == len(SHARDS) + 1 else None

    report = wait_for(report_with_new_shard, 180, "influence_report to include the new shard")
    assert report.timestamp > scored_at
    metadata = report.asset_materialization.metadata
    # Every chunk of every shard, the new one included, is in the report.
    assert metadata["documents"].value == sum(latest_metadata(instance, "corpus_shards", shard)["chunks"].value
                                              for shard in [*SHARDS, DROPPED])
    assert "dagster/from_automation_condition" in instance.get_run_by_id(report.run_id).tags  # not by hand
    # The cursor remembers the file: later sensor ticks request nothing more for it.
    sensor_runs = instance.get_runs(dg.RunsFilter(tags={"dagster/partition": DROPPED,
                                                        "dagster/sensor_name": "corpus_sensor"}))
    assert len(sensor_runs) == 1
