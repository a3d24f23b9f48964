"""Fixtures of this package: a throwaway PostgreSQL, a local S3 holding a tiny project's corpus
and artefacts, the project materialized into a Postgres-backed instance, and `dagster dev` over
it all; package-scoped, so the servers stop before the rest of the suite runs."""

from __future__ import annotations

from pathlib import Path

import boto3
import dagster as dg
import pytest

from pretrace.store.storage import Storage
from pretrace.testing.project import make_project, write_corpus_file
from tests.integration.servers import dagster_dev, postgres_bin, postgres_server, wait_for, write_dagster_home
from tests.s3server import upload

ROOT = Path(__file__).resolve().parents[2]
SHARDS = ["part-a.jsonl", "part-b.jsonl", "part-c.jsonl"]
# The file dropped into the running deployment: big enough that document_gradients takes
# seconds (about 1 ms per 32-token chunk on one CPU core, two chunks a document), so a test
# can kill it mid-step.
DROPPED = "part-d.jsonl"
DROPPED_DOCS = 2000
# Versioned, so tests can count the writes to each object.
OPS_BUCKET = "pretrace-ops"


@pytest.fixture(scope="package")
def postgres():
    if postgres_bin() is None:
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) are not installed: apt-get install -y postgresql")
    with postgres_server() as params:
        yield params


@pytest.fixture(scope="package")
def ops_project(tmp_path_factory, postgres, s3_server):
    """A tiny project whose three corpus files and all artefacts live on S3, as on a cluster, fully
    materialized into a Postgres-backed instance. The model stays on local disk."""
    root = tmp_path_factory.mktemp("ops")
    s3_client = boto3.client("s3", endpoint_url=s3_server)
    s3_client.create_bucket(Bucket=OPS_BUCKET)
    s3_client.put_bucket_versioning(Bucket=OPS_BUCKET, VersioningConfiguration={"Status": "Enabled"})
    s3 = f"s3://{OPS_BUCKET}/{root.name}"
    # A projection keeps the big dropped shard's stored gradients small; factors fitted on the
    # first three shards only, so a dropped file costs its own partition, not a refit.
    config_path = make_project(
        root / "project", storage=f"{s3}/data", corpus=f"{s3}/corpus", projection=[8, 8], fit_shards=SHARDS
    )
    write_corpus_file(root / "project" / "corpus" / "part-c.jsonl", 8, 3, "c")
    upload(root / "project" / "corpus", f"{s3}/corpus")
    home = write_dagster_home(root / "dagster_home", postgres)
    from pretrace.config import load_config
    from pretrace.pipeline.definitions import build_definitions
    from pretrace.pipeline.runner import materialize_pipeline

    with dg.DagsterInstance.from_config(str(home)) as instance:
        project = materialize_pipeline(build_definitions(load_config(config_path)), instance, log=lambda m: None)
    assert project.shards == SHARDS
    return {"root": root, "config": config_path, "home": home, "corpus": f"{s3}/corpus", "storage": f"{s3}/data"}


@pytest.fixture(scope="package")
def dagster_server(ops_project):
    env = {
        "PRETRACE_CONFIG": str(ops_project["config"]),
        "PRETRACE_SENSOR_INTERVAL_S": "5",
        "PRETRACE_AUTOMATION_INTERVAL_S": "5",
        "PRETRACE_PROGRESS_INTERVAL_S": "0.2",
        "PRETRACE_REFRESH_CRON": "* * * * *",  # the refresh schedule (off until a test starts it) every minute
    }
    with dagster_dev(ops_project["home"], env, cwd=ROOT) as server:
        yield server


@pytest.fixture(scope="package")
def step_of(ops_project):
    """The step (op) that materializes an asset in the deployment: `document_gradients_in_eigenbasis`
    for `document_gradients` under a projection in the eigenbasis (the default)."""
    from pretrace.config import load_config
    from pretrace.pipeline.definitions import build_definitions

    defs = build_definitions(load_config(ops_project["config"]))
    return lambda asset: defs.resolve_assets_def(asset).node_def.name


@pytest.fixture
def instance(ops_project):
    with dg.DagsterInstance.from_config(str(ops_project["home"])) as instance:
        yield instance


@pytest.fixture(scope="package")
def dropped_shard(ops_project, dagster_server):
    """A new corpus file put into the watched S3 prefix of the running deployment, and the
    report the automation rebuilt once the new shard was scored."""
    staged = write_corpus_file(ops_project["root"] / DROPPED, DROPPED_DOCS, 4, "d")
    Storage(ops_project["corpus"]).write_bytes(DROPPED, staged.read_bytes())  # one PUT: appears whole
    with dg.DagsterInstance.from_config(str(ops_project["home"])) as instance:
        return wait_for(lambda: report_over(instance, len(SHARDS) + 1), 420, f"a report that includes {DROPPED}")


def report_over(instance: dg.DagsterInstance, shards: int) -> dg.EventLogRecord | None:
    """The latest influence_report materialization, once it covers `shards` shards."""
    (latest,) = instance.fetch_materializations(dg.AssetKey("influence_report"), limit=1).records or [None]
    return latest if latest and latest.asset_materialization.metadata["shards"].value == shards else None
