"""A run SIGKILLed in the middle of document_gradients publishes nothing, gives its `gpu` slot
back, and re-executes from failure to artefacts byte-equal to an uninterrupted run's."""

import hashlib
import re
import signal

import boto3
import dagster as dg
import psutil
import pytest

from tests.integration.conftest import DROPPED, OPS_BUCKET
from tests.integration.servers import finished_run, wait_for

pytestmark = pytest.mark.integration

PROGRESS = re.compile(rf"document gradients of {re.escape(DROPPED)}: (\d+)/(\d+)")
REWRITTEN = {
    f"document_gradients/{DROPPED}.safetensors",
    f"document_gradients/{DROPPED}.manifest.json",
    f"influence_scores/{DROPPED}.parquet",
    f"influence_scores/{DROPPED}.stats.safetensors",
    f"influence_scores/{DROPPED}.top.parquet",
    f"influence_scores/{DROPPED}.accuracy.json",
    f"influence_scores/{DROPPED}.manifest.json",
}


def writes(endpoint: str, storage: str) -> dict[str, tuple[int, str]]:
    """(versions written, sha256 of the latest) of every object but the report's, which
    automation may rebuild meanwhile. The bucket is versioned, so every write counts."""
    s3 = boto3.client("s3", endpoint_url=endpoint)
    prefix = storage.removeprefix(f"s3://{OPS_BUCKET}/") + "/"
    out: dict[str, tuple[int, str]] = {}
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=OPS_BUCKET, Prefix=prefix):
        for v in page.get("Versions", []):
            key = v["Key"].removeprefix(prefix)
            if key.startswith("influence_report/"):
                continue
            count, latest = out.get(key, (0, ""))
            if v["IsLatest"]:
                body = s3.get_object(Bucket=OPS_BUCKET, Key=v["Key"], VersionId=v["VersionId"])["Body"].read()
                latest = hashlib.sha256(body).hexdigest()
            out[key] = (count + 1, latest)
    return out


class RunLog:
    """Reads a run's event log incrementally, so polling it often stays cheap."""

    def __init__(self, instance: dg.DagsterInstance, run_id: str):
        self.instance, self.run_id, self.cursor, self.records = instance, run_id, None, []

    def update(self) -> list:
        while True:
            page = self.instance.get_records_for_run(self.run_id, cursor=self.cursor, limit=1000)
            self.records += [r.event_log_entry for r in page.records]
            self.cursor = page.cursor
            if not page.has_more:
                return self.records

    def progress(self) -> tuple[int, int] | None:
        """(done, total) of the latest progress line of document_gradients."""
        lines = [PROGRESS.search(e.message) for e in self.records if not e.dagster_event]
        found = [(int(m[1]), int(m[2])) for m in lines if m]
        return found[-1] if found else None

    def pid(self, event_type: dg.DagsterEventType, step: str | None = None) -> int:
        """The process that logged the run's `event_type` event (for `step`)."""
        (pid,) = {
            e.dagster_event.pid
            for e in self.records
            if e.dagster_event and e.dagster_event.event_type == event_type and e.dagster_event.step_key == step
        }
        return pid

    def step_succeeded(self, step: str) -> bool:
        return any(
            e.dagster_event
            and e.dagster_event.event_type == dg.DagsterEventType.STEP_SUCCESS
            and e.dagster_event.step_key == step
            for e in self.records
        )


def mid_step(log: RunLog) -> tuple[int, int] | None:
    """(done, total) once document_gradients has logged progress with documents left."""
    log.update()
    if finished_run(log.instance, dg.RunsFilter(run_ids=[log.run_id])):
        raise AssertionError("the run ended before it could be killed mid-step: make the dropped shard bigger")
    progress = log.progress()
    return progress if progress and progress[0] < progress[1] else None


def kill_tree(pids: list[int]) -> list[int]:
    """SIGKILL these processes and every process under them, at once; the pids killed."""
    victims = []
    for pid in pids:
        process = psutil.Process(pid)
        victims += [process, *process.children(recursive=True)]
    for process in victims:
        try:
            process.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(victims, timeout=10)
    return sorted({p.pid for p in victims})


def test_run_killed_mid_document_gradients_reexecutes_to_identical_artefacts(
    dropped_shard, dagster_server, instance, ops_project, s3_server, step_of
):
    def snapshot() -> dict[str, tuple[int, str]]:
        return writes(s3_server, ops_project["storage"])

    reference = snapshot()  # the automation's uninterrupted runs wrote the dropped shard's artefacts
    assert REWRITTEN <= set(reference)

    run_id = dagster_server.launch_assets(["document_gradients", "influence_scores"], DROPPED)
    log = RunLog(instance, run_id)
    wait_for(lambda: mid_step(log), 240, f"document_gradients [{DROPPED}] to log progress", every=0.1)
    step_pid = log.pid(dg.DagsterEventType.STEP_START, step_of("document_gradients"))
    killed = kill_tree([step_pid, log.pid(dg.DagsterEventType.RUN_START)])
    log.update()
    done, total = log.progress()
    assert done < total and not log.step_succeeded(step_of("document_gradients")), "killed too late: the step ended"
    assert step_pid in killed

    # The code server notices the dead worker and fails the run; nothing was published.
    failed = wait_for(lambda: finished_run(instance, dg.RunsFilter(run_ids=[run_id])), 60, f"run {run_id} to end")
    assert failed.status == dg.DagsterRunStatus.FAILURE
    assert snapshot() == reference

    # Re-execute from failure: its gpu step can start only once the dead run's slot is freed.
    rerun_id = dagster_server.reexecute(run_id, "FROM_FAILURE")
    rerun = wait_for(lambda: finished_run(instance, dg.RunsFilter(run_ids=[rerun_id])), 240, f"re-execution {rerun_id}")
    assert rerun.status == dg.DagsterRunStatus.SUCCESS
    assert rerun.tags["dagster/partition"] == DROPPED
    rerun_log = RunLog(instance, rerun_id)
    rerun_log.update()
    assert rerun_log.step_succeeded(step_of("document_gradients")) and rerun_log.step_succeeded("influence_scores")

    after = snapshot()
    assert set(after) == set(reference)
    written = {key: after[key][0] - reference[key][0] for key in after if after[key][0] != reference[key][0]}
    assert written == dict.fromkeys(REWRITTEN, 1)  # only the killed partition's outputs, each written once
    # (a manifest is deleted first, then written last: the delete marker is not a version)...
    assert {key: after[key][1] for key in after} == {key: reference[key][1] for key in reference}  # ...byte-equal
