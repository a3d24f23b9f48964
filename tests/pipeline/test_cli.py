"""`pretrace run` as a user runs it, and the clear errors bad input gets."""

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from tests.pipeline.project import QUERIES, make_project


def pretrace(*args, cwd, env=None, timeout=300):
    env = {**os.environ, "DAGSTER_HOME": str(cwd / ".dagster_home"), **(env or {})}
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def edit_config(path: Path, **changes) -> None:
    config = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**config, **changes}))


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


def test_a_query_without_a_completion_is_named(finished, tmp_path):
    root, config, _ = finished
    bad = tmp_path / "queries.jsonl"
    bad.write_text('{"id": "q1", "kind": "factual", "prompt": "Hi"}\n')
    broken = tmp_path / "pretrace.yaml"
    broken.write_text(config.read_text())
    edit_config(broken, queries=str(bad), storage=str(root / "data"), model=str(root / "model"), corpus=str(root / "corpus"))
    result = pretrace("run", "--config", str(broken), cwd=root)
    assert result.returncode != 0
    assert f"{bad}, line 1: the query lacks `completion`" in result.stderr


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
