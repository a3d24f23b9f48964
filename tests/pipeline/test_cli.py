"""`pretrace run` as a user runs it, and the clear errors bad input gets."""

import os
import signal
import subprocess
import sys

import dagster as dg
import pyarrow.parquet as pq
import pytest
from dagster._core.execution.backfill import BulkActionStatus

from pretrace.pipeline.commands import INTERRUPTED
from pretrace.testing.project import QUERIES, edit_config, make_project, pretrace, snapshot


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A user project after one successful `pretrace run`."""
    root = tmp_path_factory.mktemp("project")
    config = make_project(root, projection=[8, 8], query_rank=2)
    result = pretrace("run", "--config", str(config), cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    return root, config, result


def test_run_writes_the_documented_outputs(finished):
    root, _, result = finished
    assert "influence_scores/<shard>.parquet" in result.stdout
    for shard, n_docs in (("part-a.jsonl", 14), ("part-b.jsonl", 10)):
        table = pq.read_table(root / "data" / "influence_scores" / f"{shard}.parquet")
        assert table.column_names == ["query_id", "doc_id", "score"]
        chunks = pq.read_table(root / "data" / "corpus_shards" / f"{shard}.parquet")
        assert len(set(chunks.column("parent_id").to_pylist())) == n_docs  # max_length 32 splits documents
        assert table.num_rows == len(QUERIES) * chunks.num_rows
        assert set(table.column("doc_id").to_pylist()) == set(chunks.column("doc_id").to_pylist())
        assert set(table.column("query_id").to_pylist()) == {q["id"] for q in QUERIES}


def test_a_run_is_one_backfill_of_few_dagster_runs_tagged_with_the_project(finished):
    """Each partition of assets partitioned alike, with its inputs never computed before, joins
    one Dagster run: a fresh project's 19 artefact partitions are 10 runs, not 19; the runs are
    one asset backfill, the one entry the UI's Runs page lists, targeting exactly those 19."""
    from pretrace.config import load_config
    from pretrace.pipeline.definitions import build_definitions

    root, config, result = finished
    assert result.stdout.count("[pretrace] materializing ") == 19
    with dg.DagsterInstance.local_temp(str(root / ".dagster_home")) as instance:
        runs = instance.get_runs()
        (backfill,) = instance.get_backfills()
        assert instance.get_runs(dg.RunsFilter(exclude_subruns=True)) == []  # nothing else in the Runs page
    assert len(runs) == 10
    assert {run.tags["pretrace/storage"] for run in runs} == {str(root / "data")} == {backfill.tags["pretrace/storage"]}
    assert {run.tags["dagster/backfill"] for run in runs} == {backfill.backfill_id}
    assert backfill.status == BulkActionStatus.COMPLETED_SUCCESS and backfill.title == f"pretrace run {root / 'data'}"
    data = backfill.get_asset_backfill_data(build_definitions(load_config(config)).resolve_asset_graph())
    assert data.target_subset == data.materialized_subset
    assert data.target_subset.num_partitions_and_non_partitioned_assets == 19


def test_a_bad_corpus_record_is_named_and_damages_nothing(finished):
    root, config, _ = finished
    scores = root / "data" / "influence_scores" / "part-a.jsonl.parquet"
    before = scores.read_bytes()
    (root / "corpus" / "part-z.jsonl").write_text('{"id": "z-1", "text": "fine"}\n{"id": "z-2", "title": "no text"}\n')
    try:
        result = pretrace("run", "--config", str(config), cwd=root)
    finally:
        (root / "corpus" / "part-z.jsonl").unlink()
    assert result.returncode != 0
    assert "part-z.jsonl, line 2: document 'z-2' has no `text` field" in result.stderr
    assert scores.read_bytes() == before


def test_a_query_without_a_prompt_is_named(finished, tmp_path):
    root, config, _ = finished
    bad = tmp_path / "queries.jsonl"
    bad.write_text('{"id": "q1", "kind": "factual", "completion": " Hi"}\n')
    broken = tmp_path / "pretrace.yaml"
    broken.write_text(config.read_text())
    edit_config(
        broken, queries=str(bad), storage=str(root / "data"), model=str(root / "model"), corpus=str(root / "corpus")
    )
    result = pretrace("run", "--config", str(broken), cwd=root)
    assert result.returncode != 0
    assert f"{bad}, line 1: the query lacks `prompt`" in result.stderr


def test_unwritable_storage_is_named(tmp_path):
    config = make_project(tmp_path)
    (tmp_path / "blocked").write_text("a file where the storage folder should be")
    edit_config(config, storage=str(tmp_path / "blocked" / "data"))
    result = pretrace("run", "--config", str(config), cwd=tmp_path)
    assert result.returncode != 0
    assert f"storage root {tmp_path / 'blocked' / 'data'} is not writable" in result.stderr


def test_unreachable_s3_fails_fast(tmp_path, unreachable_s3):
    config = make_project(tmp_path, storage="s3://bucket/prefix")
    result = pretrace("run", "--config", str(config), cwd=tmp_path, timeout=60)
    assert result.returncode != 0
    assert "storage root s3://bucket/prefix is not writable" in result.stderr
    assert "AWS_ENDPOINT_URL" in result.stderr


def test_unknown_config_key_is_named(tmp_path):
    config = make_project(tmp_path)
    edit_config(config, dampign=0.1)
    result = pretrace("run", "--config", str(config), cwd=tmp_path)
    assert result.returncode != 0
    assert "`dampign` is not a setting; did you mean `damping`?" in result.stderr


def test_status_explains_what_is_stale_and_a_rerun_of_a_current_project_computes_nothing(finished, tmp_path):
    root, config, _ = finished
    again = pretrace("run", "--config", str(config), cwd=root)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "0 artefact(s) computed" in again.stdout and "[pretrace] materializing" not in again.stdout
    status = pretrace("status", "--config", str(config), cwd=root)
    assert status.returncode == 0 and status.stdout.strip().endswith("19 current")
    changed = tmp_path / "pretrace.yaml"
    changed.write_text(config.read_text())
    edit_config(
        changed,
        top_k=3,
        storage=str(root / "data"),
        model=str(root / "model"),
        corpus=str(root / "corpus"),
        queries=str(root / "queries.jsonl"),
    )
    status = pretrace("status", "--config", str(changed), cwd=root)
    assert "stale    influence_scores[part-a.jsonl]  (`top_k` 5 -> 3)" in status.stdout
    assert "waiting  influence_report  (influence_scores[part-a.jsonl] is stale (`top_k` 5 -> 3))" in status.stdout


def test_an_unknown_fit_shard_is_named_with_the_valid_ones(tmp_path):
    config = make_project(tmp_path, fit_shards=["nope.jsonl"])
    result = pretrace("run", "--config", str(config), cwd=tmp_path)
    assert result.returncode != 0
    assert "fit_shards: 'nope.jsonl' is not a shard of" in result.stderr
    assert "the shards are: part-a.jsonl, part-b.jsonl" in result.stderr


def test_a_new_dagster_home_gets_a_run_queue_and_the_gpu_pool(tmp_path):
    from dagster._core.instance.config import dagster_instance_config

    from pretrace.pipeline.commands import _dagster_home

    home = _dagster_home({"DAGSTER_HOME": str(tmp_path / "home")})
    config, _ = dagster_instance_config(str(home))  # Dagster's own loader and checks
    assert config["concurrency"]["pools"]["default_limit"] == 1
    assert config["concurrency"]["runs"]["max_concurrent_runs"] == 2
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    _dagster_home({"DAGSTER_HOME": str(home)})
    assert (home / "dagster.yaml").read_text() == "telemetry:\n  enabled: false\n"  # the user's own is kept


def test_dg_check_defs_loads_the_code_location(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    venv = Path(sys.executable).parent.parent
    env = {
        **os.environ,
        "VIRTUAL_ENV": str(venv),
        "PATH": f"{venv / 'bin'}:{os.environ['PATH']}",
        "DAGSTER_HOME": str(tmp_path),
    }
    result = subprocess.run(
        [str(venv / "bin" / "dg"), "check", "defs"],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "All definitions loaded successfully" in result.stdout + result.stderr


def _background_run(config, root):
    """`pretrace run` as a script's `cmd &` starts it: SIGINT ignored."""
    return subprocess.Popen(
        [sys.executable, "-m", "pretrace.pipeline.cli", "run", "--config", str(config)],
        cwd=root,
        env={**os.environ, "DAGSTER_HOME": str(root / ".dagster_home")},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )


def test_sigterm_stops_a_background_run_with_one_line_and_the_rerun_finishes(tmp_path):
    config = make_project(tmp_path)
    run = _background_run(config, tmp_path)
    for line in run.stdout:
        if "materializing document_gradients" in line:
            break
    run.send_signal(signal.SIGTERM)
    assert run.wait(timeout=120) == 130
    assert run.stderr.read().splitlines() == [f"pretrace: {INTERRUPTED}"]
    assert "done in" not in run.stdout.read()
    rerun = pretrace("run", "--config", str(config), cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "materializing document_gradients" in rerun.stdout
    assert not [f for f in snapshot(tmp_path / "data") if ".pretrace-tmp" in f]
    assert rerun.stdout.rstrip().endswith(f"browse the runs and metadata with: pretrace ui --config {config}")
    with dg.DagsterInstance.local_temp(str(tmp_path / ".dagster_home")) as instance:
        statuses = [b.status for b in instance.get_backfills()]  # newest first
    assert statuses == [BulkActionStatus.COMPLETED_SUCCESS, BulkActionStatus.CANCELED]  # the stopped one closed


HOLD_THE_LOCK = """
import sys, time
from pretrace.config import load_config
from pretrace.project.run_lock import exclusive_run, project_inputs
from pretrace.store.storage import Storage
config = load_config(sys.argv[1])
with exclusive_run(Storage(config.storage), project_inputs(config)):
    print("holding", flush=True)
    time.sleep(600)
"""


def test_a_running_project_refuses_a_second_run_and_another_project_on_its_root(tmp_path):
    config = make_project(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_THE_LOCK, str(config)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "holding\n"
        second = pretrace("run", "--config", str(config), cwd=tmp_path)
        assert second.returncode == 1
        assert second.stderr.rstrip().splitlines()[-1] == (
            f"pretrace: another `pretrace run` (pid {holder.pid}) is computing {tmp_path / 'data'}; "
            "wait for it to finish (or stop it), then run again"
        )
        other = make_project(tmp_path / "other", storage=str(tmp_path / "data"))
        refused = pretrace("run", "--config", str(other), cwd=tmp_path / "other")
        assert refused.returncode == 1
        assert refused.stderr.rstrip().splitlines()[-1] == (
            f"pretrace: another project (model {tmp_path / 'model'}, corpus {tmp_path / 'corpus'}, queries "
            f"{tmp_path / 'queries.jsonl'}; pid {holder.pid}) is computing {tmp_path / 'data'}: two projects "
            "cannot share a storage root; give this one its own `storage`"
        )
    finally:
        holder.kill()


def test_the_ui_hint_opens_the_project_just_run(finished, monkeypatch):
    """`pretrace ui --config <the config>`, the last line of a run, serves that project's code
    location (not the demo), told the webserver's address so its sensor can reload it."""
    import argparse
    from contextlib import nullcontext

    from pretrace.pipeline import commands
    from pretrace.pipeline.settings import workspace_config

    root, config, result = finished
    assert result.stdout.rstrip().endswith(f"browse the runs and metadata with: pretrace ui --config {config}")
    started = {}
    monkeypatch.setattr(commands, "run_process_group", lambda command, env: started.update(env) or 0)
    monkeypatch.setattr(commands, "_report_beside", lambda env: nullcontext())
    monkeypatch.setenv("DAGSTER_HOME", str(root / ".dagster_home"))
    monkeypatch.delenv("PRETRACE_UI_URL", raising=False)
    with pytest.raises(SystemExit):
        commands.ui(argparse.Namespace(config=str(config), host="0.0.0.0", port=3001))
    loaded, demo = workspace_config(started)
    assert not demo and loaded.storage == str(root / "data")
    assert started["PRETRACE_UI_URL"] == "http://127.0.0.1:3001"


def test_a_long_or_odd_storage_root_still_gives_a_backfill_title_dagster_accepts():
    from dagster._core.definitions.utils import is_valid_title_and_reason

    from pretrace.pipeline.backfill import backfill_title

    assert backfill_title("/data/project") == "pretrace run /data/project"
    long = "s3://bucket/" + "deep/" * 40 + 'odd%*"name'
    title = backfill_title(long)
    assert is_valid_title_and_reason(title) == (True, None), title
    assert title.startswith("pretrace run …") and title.endswith("deep/odd___name")
