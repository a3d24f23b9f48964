"""A run SIGKILLed in the middle of document_gradients leaves nothing half-written, frees its
`gpu` slot, and re-executes from failure to artefacts byte-equal to an uninterrupted run's."""

import hashlib
import re
import signal

import dagster as dg
import psutil
import pytest

from pretrace.storage import open_fs
from tests.integration.conftest import DROPPED
from tests.integration.servers import wait_for

pytestmark = pytest.mark.integration

PROGRESS = re.compile(rf"document gradients of {re.escape(DROPPED)}: (\d+)/(\d+)")
RUN_PID = re.compile(r"Started process for run \(pid: (\d+)\)")
REWRITTEN = {f"document_gradients/{DROPPED}.safetensors", f"influence_scores/{DROPPED}.parquet",
             f"influence_scores/{DROPPED}.stats.safetensors", f"influence_scores/{DROPPED}.top.parquet"}


def snapshot(storage: str) -> dict[str, tuple[str, str]]:
    """(sha256, last modified) of every object but the report's, which automation may rebuild
    meanwhile. Temporary objects count too: none may be left."""
    fs, root = open_fs(storage)
    return {path[len(root) + 1:]: (hashlib.sha256(fs.cat_file(path)).hexdigest(), str(info["LastModified"]))
            for path, info in sorted(fs.find(root, detail=True).items())
            if not path[len(root) + 1:].startswith("influence_report/")}


def run_messages(instance, run_id: str) -> list[str]:
    return [r.event_log_entry.message for r in instance.get_records_for_run(run_id, limit=100_000).records]


def mid_step_progress(instance, run_id: str) -> tuple[int, int] | None:
    """(done, total) of a progress line logged while documents remained."""
    for message in run_messages(instance, run_id):
        match = PROGRESS.search(message)
        if match and int(match[1]) < int(match[2]):
            return int(match[1]), int(match[2])
    return None


def kill_run_process_tree(instance, run_id: str) -> list[int]:
    """SIGKILL the run's worker process and every process under it (the step subprocess)."""
    (pid,) = {int(m[1]) for m in map(RUN_PID.search, run_messages(instance, run_id)) if m}
    worker = psutil.Process(pid)
    victims = [worker, *worker.children(recursive=True)]
    for process in victims:
        process.send_signal(signal.SIGKILL)
    psutil.wait_procs(victims, timeout=10)
    return [p.pid for p in victims]


def finished(instance, run_id: str):
    run = instance.get_run_by_id(run_id)
    return run if run.is_finished else None


def step_succeeded(instance, run_id: str, step: str) -> bool:
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.STEP_SUCCESS).records
    return any(r.event_log_entry.dagster_event.step_key == step for r in records)


def test_run_killed_mid_document_gradients_reexecutes_to_identical_artefacts(dropped_shard, dagster_server,
                                                                              instance, ops_project):
    storage = ops_project["storage"]
    reference = snapshot(storage)  # the sensor's uninterrupted run wrote the dropped shard's artefacts
    assert REWRITTEN <= set(reference)

    run_id = dagster_server.launch_assets(["document_gradients", "influence_scores"], DROPPED)
    done, total = wait_for(lambda: mid_step_progress(instance, run_id), 240,
                           f"a progress line of document_gradients [{DROPPED}] with documents left", every=0.1)
    assert not finished(instance, run_id), "the run ended before it could be killed: make the dropped shard bigger"
    killed = kill_run_process_tree(instance, run_id)
    assert len(killed) >= 2, killed  # the run worker and the step's own process

    # The code server notices the dead worker and fails the run; nothing was published.
    failed = wait_for(lambda: finished(instance, run_id), 60, f"run {run_id} to be marked finished")
    assert failed.status == dg.DagsterRunStatus.FAILURE
    assert not step_succeeded(instance, run_id, "document_gradients")
    assert snapshot(storage) == reference

    # Re-execute from failure: the killed run's gpu slot must be freed for its steps to start.
    rerun_id = dagster_server.reexecute(run_id, "FROM_FAILURE")
    rerun = wait_for(lambda: finished(instance, rerun_id), 240, f"re-execution {rerun_id}")
    assert rerun.status == dg.DagsterRunStatus.SUCCESS
    assert rerun.tags["dagster/partition"] == DROPPED
    for step in ["document_gradients", "influence_scores"]:
        assert step_succeeded(instance, rerun_id, step)

    after = snapshot(storage)
    assert set(after) == set(reference)
    rewritten = {key for key in after if after[key][1] != reference[key][1]}
    assert rewritten == REWRITTEN  # only the killed partition's outputs were written again...
    assert {key: after[key][0] for key in after} == {key: reference[key][0] for key in reference}  # ...byte-equal
    print(f"killed pids {killed} after {done}/{total} documents")
