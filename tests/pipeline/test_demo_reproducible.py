"""The demo is deterministic: two runs at reduced size, each with a second, differently seeded
demo model compared with the first, in separate folders with separate Dagster instances, end in
byte-identical artefacts (report tables and figures included), and the chosen training length
and compared models are remembered for later runs of the folder."""

from __future__ import annotations

import json
from itertools import groupby
from pathlib import Path

import pytest

from pretrace.demo.corpus import build_demo_corpus
from pretrace.demo.files import write_records
from pretrace.demo.queries import build_demo_queries
from pretrace.inputs.corpus import read_records
from pretrace.testing.project import pretrace, snapshot

DOCS_PER_FILE, QUERIES_PER_KIND, STEPS = 12, 1, 6


@pytest.fixture(scope="module")
def full_demo(tmp_path_factory) -> tuple[list[Path], Path]:
    root = tmp_path_factory.mktemp("full")
    return build_demo_corpus(root / "corpus"), build_demo_queries(root / "queries.jsonl")


def small_demo_folder(root: Path, full_demo: tuple[list[Path], Path]) -> Path:
    """A demo folder whose corpus and queries are the first records of the full demo's (three of
    its files: one of each format), each query with its reference completion given."""
    files, queries = full_demo
    (root / "demo-data" / "corpus").mkdir(parents=True)
    for path in files[:3]:  # one file of each format
        write_records(root / "demo-data" / "corpus" / path.name, list(read_records(str(path)))[:DOCS_PER_FILE])
    rows = [json.loads(line) for line in queries.read_text().splitlines()]
    kept = [row for _, group in groupby(rows, key=lambda r: r["kind"]) for row in list(group)[:QUERIES_PER_KIND]]
    for row in kept:  # a 6-step model may write a blank answer: these runs explain the reference ones
        row.setdefault("completion", row.get("reference"))
    write_records(root / "demo-data" / "queries.jsonl", kept)
    return root


def test_two_reduced_demo_runs_write_identical_artefacts(full_demo, tmp_path):
    runs = []
    for name in ("first", "second"):
        root = small_demo_folder(tmp_path / name, full_demo)
        done = pretrace(
            "demo", "--dir", str(root), "--steps", str(STEPS), "--compare-seeds", "1", cwd=root, timeout=900
        )
        assert done.returncode == 0, done.stdout + done.stderr
        runs.append(snapshot(root / "data"))
    first, second = runs
    assert any(k.startswith("influence_report/") and k.endswith(".parquet") for k in first)
    assert json.loads((tmp_path / "first/data/model/checkpoint/training.json").read_text())["steps"] == STEPS
    assert any(k.startswith("models/seed1/influence_scores/") for k in first)
    assert first == second
    html = (tmp_path / "first/data/influence_report/report.html").read_text()
    assert "Against model seed1: per shared query" in html and "The model&#x27;s own greedy answer" in html
    assert "exact score (rank)" in html and "Two-stage retrieval" in html  # the demo projects: top lists re-scored

    # The folder remembers its training length: a plain rerun finds everything current.
    again = pretrace("demo", "--dir", str(tmp_path / "first"), cwd=tmp_path / "first", timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "0 artefact(s) computed" in again.stdout


def test_a_bad_training_length_is_refused_before_anything_is_written(tmp_path):
    refused = pretrace("demo", "--dir", str(tmp_path), "--steps", "0", cwd=tmp_path)
    assert refused.returncode != 0
    assert "`demo_steps`: Input should be greater than 0 (got 0)" in refused.stderr
    assert not (tmp_path / "demo-data").exists() and not (tmp_path / "data").exists()


def test_a_damaged_settings_file_is_named_with_the_fix(tmp_path):
    settings = tmp_path / "demo-data" / "settings.json"
    settings.parent.mkdir()
    settings.write_text('{"demo_steps": 20, "steps": 3}')
    refused = pretrace("demo", "--dir", str(tmp_path), cwd=tmp_path)
    assert refused.returncode != 0
    assert (
        f"pretrace: {settings}: expected an object with only demo_steps, demo_retrain, compare_models; delete it"
        in refused.stderr
    )
    assert not (tmp_path / "data").exists()


def test_the_demo_takes_the_shipped_model_for_its_own_corpus(full_demo, tmp_path):
    """The model asset copies the shipped checkpoint (its bytes, not a retraining) when the demo
    would train exactly that model (the reduced demos above train theirs)."""
    import dagster as dg

    from pretrace.demo.shipped_model import SHIPPED, file_hashes
    from pretrace.pipeline.definitions import build_definitions
    from pretrace.pipeline.runner import executable
    from pretrace.pipeline.settings import demo_config

    files, queries = full_demo
    (tmp_path / "demo-data" / "corpus").mkdir(parents=True)
    for path in files:
        (tmp_path / "demo-data" / "corpus" / path.name).write_bytes(path.read_bytes())
    (tmp_path / "demo-data" / "queries.jsonl").write_bytes(queries.read_bytes())
    defs = build_definitions(demo_config(tmp_path), demo=True)
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(executable(defs), selection=["model"], resources=defs.resources, instance=instance)
    assert result.success
    assert file_hashes(tmp_path / "data" / "model" / "checkpoint") == file_hashes(SHIPPED)
    said = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert any(m.startswith("using the shipped demo model (5000 steps") for m in said), said
