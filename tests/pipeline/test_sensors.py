"""Input refresh (sensor and schedule) and the policy-driven automation, on an ephemeral instance."""

import gc
import json
import os
import shutil
import threading
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.storage.defs_state.base import set_defs_state_storage

from pretrace.config import load_config
from pretrace.pipeline.definitions import build_definitions
from pretrace.pipeline.runner import asset_order, executable, logging_config
from pretrace.testing.project import clean_run_snapshot, edit_config, make_project, snapshot, write_corpus_file

A, B = "part-a.jsonl", "part-b.jsonl"


@pytest.fixture
def setup(tmp_path):
    config = load_config(make_project(tmp_path))
    return config, build_definitions(config), dg.DagsterInstance.ephemeral()


def tick(defs, instance, cursor=None):
    """One corpus_sensor tick, its result applied to the instance as the daemon applies it."""
    sensor = defs.resolve_sensor_def("corpus_sensor")
    context = dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"pretrace": defs.resources["pretrace"]}
    )
    result = sensor(context)
    assert isinstance(result, dg.SensorResult) and not result.run_requests
    for request in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(request.partitions_def_name, request.partition_keys)
    for event in result.asset_events:
        instance.report_runless_asset_event(event)
    return result


def tick_log(defs, instance, capfd, cursor=None) -> tuple[dg.SensorResult, str]:
    """A tick and what it logs."""
    capfd.readouterr()
    result = tick(defs, instance, cursor)
    return result, capfd.readouterr().err


def observed(instance, asset, partition=None) -> list[str]:
    """The data versions observed for a source (partition), oldest first."""
    records = instance.fetch_observations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition] if partition else None),
        limit=100,
    ).records
    return [r.asset_observation.tags["dagster/data_version"] for r in reversed(records)]


def test_new_files_become_partitions_and_every_input_is_observed_once(setup, capfd):
    """The tick returns what it found (partition requests, observations) and says it in its log."""
    _, defs, instance = setup
    first, said = tick_log(defs, instance, capfd)
    assert "new shards: part-a.jsonl, part-b.jsonl" in first.skip_reason.skip_message  # what the tick shows
    assert [(r.partitions_def_name, r.partition_keys) for r in first.dynamic_partitions_requests] == [("shard", [A, B])]
    assert len(first.asset_events) == 4
    assert set(instance.get_dynamic_partitions("shard")) == {A, B}
    assert "INFO - 4 inputs watched; new shards: part-a.jsonl, part-b.jsonl; changed: " in said
    for asset, partition in (("corpus_files", A), ("corpus_files", B), ("checkpoint", None), ("query_file", None)):
        (version,) = observed(instance, asset, partition)
        assert version.startswith(("sha256:", "tree:")), version
    assert set(json.loads(first.cursor)) == {f"corpus_files[{A}]", f"corpus_files[{B}]", "checkpoint", "query_file"}
    second = tick(defs, instance, first.cursor)
    assert second.skip_reason.skip_message.startswith("no new or changed inputs among 4 inputs watched")
    assert len(observed(instance, "corpus_files", A)) == 1


def test_entries_of_the_corpus_folder_that_are_not_read_are_named_on_the_tick(setup, capfd):
    config, defs, instance = setup
    (Path(config.corpus) / "notes.json").write_text("{}")
    _, message = tick_log(defs, instance, capfd)
    assert "not read: notes.json: not a corpus file; convert it to .jsonl" in message
    records = instance.fetch_observations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("corpus_files"), asset_partitions=[A]), limit=1
    ).records
    skipped = records[0].asset_observation.metadata["skipped_in_folder"].value
    assert [entry.split(":")[0] for entry in skipped] == ["notes.json"]


def test_content_changes_are_observed_and_touches_are_not(setup, capfd):
    config, defs, instance = setup
    first = tick(defs, instance)
    path = Path(config.corpus) / B
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5 * 10**9))  # touched, same bytes
    assert tick(defs, instance, first.cursor).skip_reason.skip_message.startswith("no new or changed inputs")
    write_corpus_file(path, 12, 9, "b2")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # new bytes, old modification time
    second, said = tick_log(defs, instance, capfd, first.cursor)
    assert f"changed: corpus_files[{B}]" in said and f"changed: corpus_files[{B}]" in second.skip_reason.skip_message
    assert len(observed(instance, "corpus_files", B)) == 2 and len(observed(instance, "corpus_files", A)) == 1


def test_a_removed_file_is_reported_with_the_cleanup_command(setup, capfd):
    config, defs, instance = setup
    first = tick(defs, instance)
    os.remove(os.path.join(config.corpus, A))
    capfd.readouterr()
    second = tick(defs, instance, first.cursor)
    assert (
        "corpus files gone: part-a.jsonl (remove their artefacts with `pretrace clean"
        in second.skip_reason.skip_message
    )
    assert "WARNING - corpus files gone: part-a.jsonl; remove their artefacts" in capfd.readouterr().err
    assert set(json.loads(second.cursor)) == {f"corpus_files[{B}]", "checkpoint", "query_file"}


def test_without_a_cursor_the_instance_observations_count(setup):
    """A fresh sensor (or the cursor-less schedule) does not observe unchanged inputs again."""
    _, defs, instance = setup
    tick(defs, instance)
    assert "no new or changed inputs" in tick(defs, instance, None).skip_reason.skip_message


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
        context = dg.build_schedule_context(instance=instance, resources={"pretrace": defs.resources["pretrace"]})
        result = schedule(context)  # nothing computed yet: the shards' tokens wait for the model
        assert isinstance(result, dg.SkipReason) and "new shards" in result.skip_message
        assert set(instance.get_dynamic_partitions("shard")) == {A, B}
        context = dg.build_schedule_context(instance=instance, resources={"pretrace": defs.resources["pretrace"]})
        assert "no new or changed inputs" in schedule(context).skip_message


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


def evaluate(defs, instance, cursor):
    """One automation tick: (cursor, the (asset, partition) pairs it requests)."""
    result = dg.evaluate_automation_conditions(defs, instance, asset_selection=dg.AssetSelection.all(), cursor=cursor)
    requested = set()
    for name in asset_order(defs):
        key = dg.AssetKey(name)
        if not result.get_num_requested(key):
            continue
        partitions = result.get_requested_partitions(key)
        requested |= {(name, p) for p in partitions} if partitions != {None} else {(name, None)}
    return result.cursor, requested


def materialize(defs, instance, requested) -> None:
    for name, partition in sorted(requested, key=lambda r: asset_order(defs).index(r[0])):
        dg.materialize(
            executable(defs),
            selection=[name],
            partition_key=partition,
            instance=instance,
            resources=defs.resources,
            run_config=logging_config(),
        )


def settle(defs, instance, cursor=None):
    """Tick and materialize what each tick requests until nothing is: (the cursor then, every
    request in order, the requests of each tick)."""
    seen, ticks = [], []
    while True:
        cursor, requested = evaluate(defs, instance, cursor)
        if not requested:
            return cursor, seen, ticks
        seen += sorted(requested, key=str)
        ticks.append(requested)
        materialize(defs, instance, requested)


def runs(ticks) -> int:
    """The runs automation launches for these ticks: one per partition (or unpartitioned set) a tick requests."""
    return sum(len({partition for _, partition in requested}) for requested in ticks)


def test_automation_brings_a_new_project_to_the_clean_state_and_a_new_file_to_the_report_in_three_runs(
    tmp_path, isolated_defs_state
):
    """Each partition is requested once; a partition whose inputs are requested in the same tick,
    for the same partition and never computed before, joins their run: a new corpus file (outside
    the fit) is one run for its tokens, gradients and scores, then the tables that read every
    shard, then the report. The refresh schedule finds the file and launches the first run itself."""
    config = load_config(make_project(tmp_path, fit_shards=[A, B]))
    defs = build_definitions(config)
    (tmp_path / "instance").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "instance")) as instance:  # a schedule needs a stored instance
        tick(defs, instance)  # the sensor registers the shards
        cursor, seen, ticks = settle(defs, instance)
        assert len(seen) == len(set(seen)) == 19  # every artefact partition, once
        assert [r for r in seen if r[0] == "influence_report"] == [("influence_report", None)]
        assert len(ticks) == 7  # stage by stage where the partitioning changes (shards -> one -> shards ...)
        assert {("model", None), ("queries", None), ("completions", None)} == ticks[0]
        assert snapshot(Path(config.storage)) == clean_run_snapshot(config, tmp_path)

        new = "part-c.jsonl"
        write_corpus_file(Path(config.corpus) / new, 6, 3, "c")
        schedule = defs.resolve_schedule_def("corpus_refresh_schedule")
        context = dg.build_schedule_context(instance=instance, resources={"pretrace": defs.resources["pretrace"]})
        (run,) = schedule(context)
        assert run.partition_key == new
        assert run.asset_selection == [
            dg.AssetKey(n) for n in ("corpus_shards", "document_gradients", "influence_scores")
        ]
        _, _, ticks = settle(defs, instance, cursor)
        assert ticks == [
            {("corpus_shards", new), ("document_gradients", new), ("influence_scores", new)},
            {("attribution_eval", None), ("reranked_scores", None)},
            {("influence_report", None)},  # it reads artefacts computed before, which may come back the same
        ]
        assert runs(ticks) == 3


def test_automation_fans_the_fitting_out_by_shard_and_layer_group(tmp_path):
    """With two layer groups, each (shard, group) of the two fitting passes and each group's
    eigenbasis is a partition of its own, requested once, as Dagster names it."""
    config = load_config(make_project(tmp_path, layer_groups=2))
    defs, instance = build_definitions(config), dg.DagsterInstance.ephemeral()
    tick(defs, instance)
    _, seen, _ = settle(defs, instance)
    groups = ("group-0", "group-1")
    assert {(n, str(p)) for n, p in seen if n in ("ekfac_covariances", "ekfac_eigenbasis", "ekfac_lambdas")} == {
        *((n, f"{g}|{s}") for n in ("ekfac_covariances", "ekfac_lambdas") for s in (A, B) for g in groups),
        *(("ekfac_eigenbasis", g) for g in groups),
    }
    assert len(seen) == len(set(seen)) == 19 + 2 * 2 + 1  # two more partitions per pass, one more eigenbasis
    assert snapshot(Path(config.storage)) == clean_run_snapshot(config, tmp_path)


def test_automation_does_not_retry_a_failed_state_but_retries_a_changed_one(setup):
    config, defs, instance = setup
    tick(defs, instance)
    cursor, requested = evaluate(defs, instance, None)
    assert ("queries", None) in requested
    # The run of `queries` failed (it never materialized): the same state is not requested again...
    cursor, requested = evaluate(defs, instance, cursor)
    assert ("queries", None) not in requested
    # ...until its input changes: the user fixed the file.
    with open(config.queries, "a") as f:
        f.write('{"id": "fixed", "kind": "factual", "prompt": "The capital of Peru is", "completion": " Lima."}\n')
    cursor, requested = evaluate(defs, instance, cursor)
    assert ("queries", None) in requested


def test_automation_recomputes_what_a_wiped_storage_root_lost(setup, tmp_path):
    config, defs, instance = setup
    tick(defs, instance)
    cursor, _, _ = settle(defs, instance)
    shutil.rmtree(config.storage)
    cursor, requested = evaluate(defs, instance, cursor)
    # The roots first (and what joins their run), whatever the instance remembers.
    assert requested == {("model", None), ("queries", None), ("completions", None)}


def test_automation_with_unreadable_inputs_requests_nothing_and_says_why(setup, caplog):
    config, defs, instance = setup
    shutil.rmtree(config.corpus)
    _, requested = evaluate(defs, instance, None)
    assert requested == set()
    assert sum("nothing requested: corpus folder" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize("asset, partition", [("influence_scores", A), ("influence_report", None)])
def test_automation_leaves_a_partition_alone_while_a_run_computes_it(setup, asset, partition):
    """Publishing deletes the old manifest first: that brief `missing` must not start a second
    run; once the run has ended without a manifest, the partition is requested."""
    config, defs, instance = setup
    tick(defs, instance)
    cursor, _, _ = settle(defs, instance)
    job = defs.resolve_implicit_global_asset_job_def()
    run = instance.create_run_for_job(
        job,
        asset_selection=frozenset({dg.AssetKey(asset)}),
        tags={"dagster/partition": partition} if partition else None,
        status=dg.DagsterRunStatus.STARTED,
    )
    manifest = Path(config.storage) / asset / (f"{partition}.manifest.json" if partition else "manifest.json")
    manifest.unlink()  # the run is publishing
    cursor, requested = evaluate(defs, instance, cursor)
    assert requested == set()
    instance.report_run_failed(run, "killed while publishing")
    cursor, requested = evaluate(defs, instance, cursor)
    assert requested == {(asset, partition)}


def tick_after_raising_top_k(setup, capfd, monkeypatch):
    """(config path, tick result, tick log) of the tick after the project's top_k went 5 -> 6."""
    config, defs, instance = setup
    path = Path(config.storage).parent / "pretrace.yaml"
    monkeypatch.setenv("PRETRACE_CONFIG", str(path))
    first = tick(defs, instance)
    edit_config(path, top_k=6)
    second, said = tick_log(defs, instance, capfd, first.cursor)
    return path, second, said


def test_an_edited_config_is_named_with_old_and_new_values_on_the_next_tick(setup, capfd, monkeypatch):
    """Before any reload: the tick says which setting changed, and every asset depending on it
    gets an observation saying so (what the UI shows); the next tick says nothing more."""
    _, defs, instance = setup
    path, second, said = tick_after_raising_top_k(setup, capfd, monkeypatch)
    assert "pretrace.yaml changed: `top_k` 5 -> 6 (reload the code location to compute with them)" in said
    observed_settings = {
        e.asset_key.to_user_string(): e.metadata["settings changed"].value
        for e in second.asset_events
        if "settings changed" in e.metadata
    }
    assert set(observed_settings) == {"influence_scores", "reranked_scores", "attribution_eval", "influence_report"}
    assert (
        observed_settings["influence_scores"]
        == f"`top_k` 5 -> 6 in {path} (reload the code location to compute with them)"
    )
    third = tick(defs, instance, second.cursor)
    assert third.skip_reason.skip_message.startswith("no new or changed inputs") and not third.asset_events


def test_with_a_webserver_to_ask_the_sensor_reloads_its_code_location(setup, capfd, monkeypatch):
    """With $PRETRACE_UI_URL (`pretrace ui` sets it), the tick says the location reloads, and the
    reload is the webserver's GraphQL mutation the UI's Reload button sends."""
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from pretrace.pipeline.sensors import reload_in_background

    received = []

    class Webserver(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append((self.path, json.loads(self.rfile.read(int(self.headers["Content-Length"])))))
            body = json.dumps({"data": {"reloadRepositoryLocation": {"__typename": "WorkspaceLocationEntry"}}})
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Webserver)
    threading.Thread(target=server.handle_request, daemon=True).start()
    monkeypatch.setenv("PRETRACE_UI_URL", f"http://127.0.0.1:{server.server_port}")
    _, _, said = tick_after_raising_top_k(setup, capfd, monkeypatch)
    assert "pretrace.yaml changed: `top_k` 5 -> 6 (the code location reloads to compute with them)" in said
    reload_in_background("pretrace.pipeline.definitions").join(30)
    server.server_close()
    ((url_path, request),) = received
    assert url_path == "/graphql" and request["variables"] == {"name": "pretrace.pipeline.definitions"}
    assert "reloadRepositoryLocation(repositoryLocationName: $name)" in request["query"]
    monkeypatch.delenv("PRETRACE_UI_URL")
    assert reload_in_background("pretrace.pipeline.definitions") is None  # no webserver to ask
