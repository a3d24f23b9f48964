"""Corpus refresh (sensor and schedule) and the declarative automation, on an ephemeral instance."""

import gc
import json
import os
import warnings
from pathlib import Path

import dagster as dg
from dagster._core.storage.defs_state.base import set_defs_state_storage
import pytest

from pipeline.definitions import build_definitions
from pipeline.sensors import CHANGE_TAG, FILE_TAG, REMOVED_TAG
from pretrace.config import load_config
from tests.pipeline.project import make_project, write_corpus_file

warnings.filterwarnings("ignore", category=dg.BetaWarning)


@pytest.fixture
def setup(tmp_path):
    config = load_config(make_project(tmp_path))
    defs = build_definitions(config)
    instance = dg.DagsterInstance.ephemeral()
    return config, defs, instance


def tick(defs, instance, cursor=None):
    sensor = defs.resolve_sensor_def("corpus_sensor")
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"influence": defs.resources["influence"]})
    result = sensor(context)
    assert isinstance(result, dg.SensorResult)
    # What the sensor daemon does with the result: register the requested partitions.
    for request in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result


def by_shard(result):
    return {r.partition_key: r for r in result.run_requests or []}


def test_new_files_get_partitions_and_runs_unchanged_files_skip(setup):
    _, defs, instance = setup
    first = tick(defs, instance)
    assert [list(r.partition_keys) for r in first.dynamic_partitions_requests] == [["part-a.jsonl", "part-b.jsonl"]]
    assert set(instance.get_dynamic_partitions("shard")) == {"part-a.jsonl", "part-b.jsonl"}
    requests = by_shard(first)
    assert set(requests) == {"part-a.jsonl", "part-b.jsonl"}
    assert requests["part-a.jsonl"].tags[CHANGE_TAG] == "new"
    assert requests["part-a.jsonl"].tags[FILE_TAG].endswith("corpus/part-a.jsonl")
    assert requests["part-a.jsonl"].run_key != requests["part-b.jsonl"].run_key
    assert set(json.loads(first.cursor)) == {"part-a.jsonl", "part-b.jsonl"}

    second = tick(defs, instance, first.cursor)
    assert not second.run_requests and not second.dynamic_partitions_requests
    assert "no new or changed corpus files" in second.skip_reason.skip_message
    assert second.cursor == first.cursor


def test_a_changed_file_gets_a_new_run_with_a_new_run_key(setup):
    config, defs, instance = setup
    first = tick(defs, instance)
    path = os.path.join(config.corpus, "part-b.jsonl")
    stat = os.stat(path)
    write_corpus_file(Path(path), 12, 9, "b2")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))  # coarse-mtime filesystems
    second = tick(defs, instance, first.cursor)
    requests = by_shard(second)
    assert set(requests) == {"part-b.jsonl"}
    assert requests["part-b.jsonl"].tags[CHANGE_TAG] == "changed"
    assert requests["part-b.jsonl"].run_key != by_shard(first)["part-b.jsonl"].run_key
    assert not second.dynamic_partitions_requests
    assert not tick(defs, instance, second.cursor).run_requests


def test_a_removed_file_is_reported_not_silently_kept(setup, capfd):
    config, defs, instance = setup
    first = tick(defs, instance)
    os.remove(os.path.join(config.corpus, "part-a.jsonl"))
    capfd.readouterr()
    second = tick(defs, instance, first.cursor)
    logged = capfd.readouterr().err  # the tick's log (Dagster's console handler)
    assert not second.run_requests
    assert "removed" in second.skip_reason.skip_message and "part-a.jsonl" in second.skip_reason.skip_message
    assert "WARNING - corpus files removed: part-a.jsonl" in logged
    assert set(json.loads(second.cursor)) == {"part-b.jsonl"}
    # Runs requested later carry the removal in their tags, so it shows on the run page too.
    write_corpus_file(Path(config.corpus) / "part-c.jsonl", 5, 4, "c")
    third = tick(defs, instance, second.cursor)
    assert set(by_shard(third)) == {"part-c.jsonl"}
    assert by_shard(third)["part-c.jsonl"].tags[REMOVED_TAG] == "part-a.jsonl"


def test_a_fresh_cursor_trusts_what_the_instance_already_materialized(setup):
    """A new sensor (or the cursor-less schedule) on an existing deployment does not redo the corpus."""
    _, defs, instance = setup
    from assets.corpus import corpus_by_shard
    files = corpus_by_shard(defs.resources["influence"].corpus)
    instance.add_dynamic_partitions("shard", list(files))
    instance.report_runless_asset_event(dg.AssetMaterialization(
        "corpus_shards", partition="part-a.jsonl", metadata={"file_token": files["part-a.jsonl"].token}))
    result = tick(defs, instance)
    assert set(by_shard(result)) == {"part-b.jsonl"}
    assert by_shard(result)["part-b.jsonl"].tags[CHANGE_TAG] == "changed"


@pytest.fixture
def isolated_defs_state():
    """A schedule context, when garbage-collected, leaves its instance's storage as the process's
    current defs-state storage (a Dagster context variable); later Definitions loads in this
    process would then resolve a disposed instance. Collect it here and restore the variable."""
    with set_defs_state_storage(None):
        yield
        gc.collect()


def test_the_schedule_runs_the_same_refresh(setup, tmp_path, isolated_defs_state):
    _, defs, _ = setup
    schedule = defs.resolve_schedule_def("corpus_refresh_schedule")
    assert schedule.cron_schedule == "0 3 * * *"
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        context = dg.build_schedule_context(instance=instance, resources={"influence": defs.resources["influence"]})
        requests = schedule(context)
        assert {r.partition_key for r in requests} == {"part-a.jsonl", "part-b.jsonl"}
        assert set(instance.get_dynamic_partitions("shard")) == {"part-a.jsonl", "part-b.jsonl"}
        context = dg.build_schedule_context(instance=instance, resources={"influence": defs.resources["influence"]})
        # Not materialized yet: the next tick asks again with the same run keys, which the
        # scheduler daemon drops as duplicates.
        assert {r.run_key for r in schedule(context)} == {r.run_key for r in requests}


def test_the_refresh_cron_is_configurable(tmp_path, monkeypatch):
    monkeypatch.setenv("PRETRACE_REFRESH_CRON", "*/15 * * * *")
    defs = build_definitions(load_config(make_project(tmp_path)))
    assert defs.resolve_schedule_def("corpus_refresh_schedule").cron_schedule == "*/15 * * * *"


def test_sensors_start_running(setup):
    _, defs, _ = setup
    assert defs.resolve_sensor_def("corpus_sensor").default_status == dg.DefaultSensorStatus.RUNNING
    automation = defs.resolve_sensor_def("pretrace_automation")
    assert isinstance(automation, dg.AutomationConditionSensorDefinition)
    assert automation.default_status == dg.DefaultSensorStatus.RUNNING


def _materialize(instance, asset, partitions=(None,)):
    for p in partitions:
        instance.report_runless_asset_event(dg.AssetMaterialization(asset, partition=p))


def test_automation_carries_a_new_shard_and_updates_the_report_once_per_batch(setup):
    _, defs, instance = setup
    shards = ["part-a.jsonl", "part-b.jsonl"]
    instance.add_dynamic_partitions("shard", shards)
    for asset in ["model", "ekfac_factors", "queries", "query_gradients", "influence_report"]:
        _materialize(instance, asset)
    for asset in ["corpus_shards", "document_gradients", "influence_scores"]:
        _materialize(instance, asset, shards)
    selection = dg.AssetSelection.assets("document_gradients", "influence_scores", "influence_report")

    def evaluate(cursor):
        result = dg.evaluate_automation_conditions(defs, instance, asset_selection=selection, cursor=cursor)
        requested = {
            (key, p) for key in ["document_gradients", "influence_scores", "influence_report"]
            for p in (result.get_requested_partitions(dg.AssetKey(key)) if key != "influence_report"
                      else ([None] if result.get_num_requested(dg.AssetKey(key)) else []))
        }
        return result.cursor, requested

    cursor, requested = evaluate(None)
    assert requested == set()  # the first evaluation starts from the current state

    # A batch of two new shards, tokenized (by the sensor's runs or by hand).
    instance.add_dynamic_partitions("shard", ["part-c.jsonl", "part-d.jsonl"])
    cursor, requested = evaluate(cursor)
    assert requested == set()  # missing upstream: nothing to do yet
    _materialize(instance, "corpus_shards", ["part-c.jsonl", "part-d.jsonl"])
    cursor, requested = evaluate(cursor)
    assert requested == {("document_gradients", "part-c.jsonl"), ("document_gradients", "part-d.jsonl"),
                         ("influence_scores", "part-c.jsonl"), ("influence_scores", "part-d.jsonl")}

    # The runs land (each updates gradients and scores of its shard): one report for the batch.
    _materialize(instance, "document_gradients", ["part-c.jsonl", "part-d.jsonl"])
    _materialize(instance, "influence_scores", ["part-c.jsonl", "part-d.jsonl"])
    cursor, requested = evaluate(cursor)
    assert ("influence_report", None) in requested
    _materialize(instance, "influence_report")
    cursor, requested = evaluate(cursor)
    assert ("influence_report", None) not in requested  # once per batch, not once per shard
