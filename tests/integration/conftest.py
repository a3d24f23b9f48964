"""Fixtures of this package: a throwaway PostgreSQL, a tiny project materialized against it and
`dagster dev`; package-scoped, so the servers stop before the rest of the suite runs."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import pytest

from tests.integration.servers import dagster_dev, postgres_bin, postgres_server, write_dagster_home
from tests.pipeline.project import make_project, write_corpus_file

ROOT = Path(__file__).resolve().parents[2]
SHARDS = ["part-a.jsonl", "part-b.jsonl", "part-c.jsonl"]


@pytest.fixture(scope="package")
def postgres():
    if postgres_bin() is None:
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) are not installed: apt-get install -y postgresql")
    with postgres_server() as params:
        yield params


@pytest.fixture(scope="package")
def ops_project(tmp_path_factory, postgres):
    """A tiny project with three corpus files, fully materialized into a Postgres-backed instance."""
    root = tmp_path_factory.mktemp("ops")
    config_path = make_project(root / "project")
    write_corpus_file(root / "project" / "corpus" / "part-c.jsonl", 8, 3, "c")
    home = write_dagster_home(root / "dagster_home", postgres)
    from pipeline.definitions import build_definitions
    from pipeline.runner import materialize_pipeline
    from pretrace.config import load_config

    old = os.environ.get("DAGSTER_HOME")
    os.environ["DAGSTER_HOME"] = str(home)
    try:
        with dg.DagsterInstance.get() as instance:
            shards = materialize_pipeline(build_definitions(load_config(config_path)), instance, log=lambda m: None)
    finally:
        os.environ.pop("DAGSTER_HOME") if old is None else os.environ.__setitem__("DAGSTER_HOME", old)
    assert shards == SHARDS
    return {"root": root, "config": config_path, "home": home}


@pytest.fixture(scope="package")
def dagster_server(ops_project):
    env = {"PRETRACE_CONFIG": str(ops_project["config"]), "PRETRACE_SENSOR_INTERVAL_S": "5",
           "PRETRACE_AUTOMATION_INTERVAL_S": "5"}
    with dagster_dev(ops_project["home"], env, cwd=ROOT) as server:
        yield server


@pytest.fixture
def instance(ops_project, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(ops_project["home"]))
    with dg.DagsterInstance.get() as instance:
        yield instance
