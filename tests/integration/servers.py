"""Real servers for integration tests: a throwaway PostgreSQL and `dagster dev`, on 127.0.0.1."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import dagster as dg
import yaml

from tests.s3server import free_port

T = TypeVar("T")


def postgres_bin() -> Path | None:
    """The directory of initdb/pg_ctl (Debian's `postgresql` package), or None."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(os.path.realpath(found)).parent
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    return Path(dirs[-1]) if dirs else None


@contextlib.contextmanager
def postgres_server(db: str = "dagster") -> Iterator[dict]:
    """Start PostgreSQL in a temp dir (as the `postgres` user when run as root); yield its params."""
    bindir = postgres_bin()
    if bindir is None:
        raise FileNotFoundError("PostgreSQL binaries not found (apt-get install -y postgresql)")
    root = Path(tempfile.mkdtemp(prefix="pretrace-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root
        shutil.chown(root, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", free_port()

    def run(*cmd):
        return subprocess.run([*as_user, *cmd], check=True, capture_output=True, text=True)

    run(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "dagster", "--no-sync", "-E", "UTF8")
    run(
        str(bindir / "pg_ctl"),
        "-D",
        str(data),
        "-l",
        str(root / "log"),
        "-w",
        "-t",
        "60",
        "start",
        "-o",
        f"-h 127.0.0.1 -p {port} -k {root} -c fsync=off -c full_page_writes=off",
    )
    try:
        run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "dagster", db)
        yield {"hostname": "127.0.0.1", "port": port, "username": "dagster", "password": "", "db_name": db}
    finally:
        subprocess.run(
            [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"], capture_output=True
        )
        shutil.rmtree(root, ignore_errors=True)


def write_dagster_home(home: Path, pg: dict, gpu_limit: int = 1) -> Path:
    """A DAGSTER_HOME whose dagster.yaml is infra/dagster.yaml's setup on the test Postgres."""
    home.mkdir(parents=True, exist_ok=True)
    config = {
        # scheme: SQLAlchemy 2.1 maps plain postgresql:// to psycopg 3; dagster-postgres ships psycopg2.
        "storage": {
            "postgres": {
                "postgres_db": {
                    **{k: pg[k] for k in ("hostname", "port", "username", "password", "db_name")},
                    "scheme": "postgresql+psycopg2",
                }
            }
        },
        "run_coordinator": {
            "module": "dagster._core.run_coordinator",
            "class": "QueuedRunCoordinator",
            "config": {"dequeue_interval_seconds": 1},
        },
        "concurrency": {"runs": {"max_concurrent_runs": 3}, "pools": {"default_limit": gpu_limit, "granularity": "op"}},
        "run_monitoring": {"enabled": True, "poll_interval_seconds": 2, "free_slots_after_run_end_seconds": 5},
        "telemetry": {"enabled": False},
    }
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    return home


def wait_for(predicate: Callable[[], T | None], deadline_s: float, what: str, every: float = 2) -> T:
    """Poll `predicate` until it returns something truthy; a TimeoutError names what never came.
    Predicates raise themselves when what they wait for can no longer come (a failed run)."""
    deadline = time.monotonic() + deadline_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {deadline_s:.0f} s waiting for {what}")
        time.sleep(every)


def finished_run(instance: dg.DagsterInstance, filters: dg.RunsFilter) -> dg.DagsterRun | None:
    """The latest run matching `filters` once it has finished, else None."""
    runs = instance.get_runs(filters, limit=1)
    return runs[0] if runs and runs[0].is_finished else None


def _run_mutation(field: str, argument: str, input_type: str) -> str:
    """A GraphQL mutation that launches one run and answers its id or the error."""
    return f"""
mutation($params: {input_type}!) {{
  {field}({argument}: $params) {{
    __typename
    ... on LaunchRunSuccess {{ run {{ runId }} }}
    ... on PythonError {{ message stack }}
    ... on Error {{ message }}
  }}
}}"""


LAUNCH_RUN = _run_mutation("launchRun", "executionParams", "ExecutionParams")
REEXECUTE_RUN = _run_mutation("launchRunReexecution", "reexecutionParams", "ReexecutionParams")
REPOSITORIES = "{ repositoriesOrError { ... on RepositoryConnection { nodes { name location { name } } } } }"
TICKS = """
query($selector: SensorSelector!, $limit: Int!) {
  sensorOrError(sensorSelector: $selector) {
    __typename
    ... on Sensor { sensorState { ticks(limit: $limit) {
      status timestamp cursor skipReason
      dynamicPartitionsRequestResults { partitionsDefName partitionKeys type }
    } } }
  }
}"""


class DagsterDev:
    def __init__(self, url: str, proc: subprocess.Popen, log: Path):
        self.url, self.proc, self.log = url, proc, log

    def repository(self) -> dict[str, str]:
        """The selector fields of the one code location's repository."""
        (repo,) = self.graphql(REPOSITORIES)["repositoriesOrError"]["nodes"]
        return {"repositoryLocationName": repo["location"]["name"], "repositoryName": repo["name"]}

    def ticks(self, sensor: str, limit: int = 100) -> list[dict]:
        """A sensor's latest ticks, newest first: status, timestamp, cursor, skipReason and the
        partitions each requested, as the UI's tick history shows them."""
        selector = {**self.repository(), "sensorName": sensor}
        return self.graphql(TICKS, {"selector": selector, "limit": limit})["sensorOrError"]["sensorState"]["ticks"]

    def latest_tick(self, sensor: str) -> dict | None:
        ticks = self.ticks(sensor, limit=1)
        return ticks[0] if ticks else None

    def launch_assets(self, assets: list[str], partition: str) -> str:
        """Launch one run materializing `assets` for `partition`, as the UI's Materialize does; its id."""
        selector = {**self.repository(), "jobName": "__ASSET_JOB", "assetSelection": [{"path": [a]} for a in assets]}
        params = {
            "selector": selector,
            "runConfigData": {},
            "executionMetadata": {"tags": [{"key": "dagster/partition", "value": partition}]},
        }
        return self._run_id(self.graphql(LAUNCH_RUN, {"params": params})["launchRun"])

    def reexecute(self, run_id: str, strategy: str = "FROM_FAILURE") -> str:
        """Re-execute a finished run, as the run page's Re-execute menu does; the new run's id."""
        params = {"parentRunId": run_id, "strategy": strategy}
        return self._run_id(self.graphql(REEXECUTE_RUN, {"params": params})["launchRunReexecution"])

    @staticmethod
    def _run_id(result: dict) -> str:
        if result["__typename"] != "LaunchRunSuccess":
            raise RuntimeError(f"launch failed: {result}")
        return result["run"]["runId"]

    def graphql(self, query: str, variables: dict | None = None, timeout: float = 60) -> dict:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        req = urllib.request.Request(f"{self.url}/graphql", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as response:
            out = json.loads(response.read())
        if out.get("errors"):
            raise RuntimeError(f"GraphQL errors: {out['errors']}")
        return out["data"]


@contextlib.contextmanager
def dagster_dev(home: Path, env: dict[str, str], cwd: Path, timeout: float = 180) -> Iterator[DagsterDev]:
    """`dagster dev` (webserver + daemon) on 127.0.0.1 and a free port, told its own address as
    `pretrace ui` tells it (so the corpus sensor can reload the code location); yields a DagsterDev."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = home / "dagster-dev.log"
    dagster = Path(sys.executable).parent / "dagster"
    proc = subprocess.Popen(
        [str(dagster), "dev", "-h", "127.0.0.1", "-p", str(port), "-m", "pretrace.pipeline.definitions"],
        cwd=cwd,
        env={**os.environ, "PRETRACE_UI_URL": url, **env, "DAGSTER_HOME": str(home)},
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    server = DagsterDev(url, proc, log)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"dagster dev exited ({proc.returncode}):\n{log.read_text()[-4000:]}")
            try:
                data = server.graphql(REPOSITORIES)
                if data["repositoriesOrError"].get("nodes"):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"dagster dev did not come up:\n{log.read_text()[-4000:]}")
            time.sleep(1)
        yield server
    finally:
        _stop_tree(proc)


def _stop_tree(proc: subprocess.Popen) -> None:
    """Stop dagster dev and every process it started: webserver, daemon, code servers, run
    workers. Code servers can leave the process group, so children are found by parentage."""
    import psutil

    family = psutil.Process(proc.pid).children(recursive=True)
    os.killpg(proc.pid, 15)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait()
    for child in family:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
