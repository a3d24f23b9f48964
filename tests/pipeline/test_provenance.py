"""Storage is the truth: after any change, a rerun ends in the bytes of a clean run of the final
state (fresh storage, fresh instance), and recomputes exactly what the change invalidated.

Every scenario starts from one finished tiny project (two shards, three queries), copies its
storage, changes one thing, reruns `pretrace run` in-process or as a user runs it, and compares
every stored artefact with a clean run (the report page's timestamp aside).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml

from pretrace.config import load_config
from pretrace.errors import InputError
from pretrace.pipeline.definitions import build_definitions
from pretrace.pipeline.runner import executable
from pretrace.project.provenance import Project
from pretrace.testing.project import (
    QUERIES,
    clean_run_snapshot,
    edit_config,
    make_project,
    pretrace,
    run_pipeline,
    snapshot,
    write_corpus_file,
)

A, B = "part-a.jsonl", "part-b.jsonl"
SHARDED = ("corpus_shards", "ekfac_covariances", "ekfac_lambdas", "document_gradients", "influence_scores")


def each(*names: str, shards=(A, B)) -> set[str]:
    return {f"{n}[{s}]" if n in SHARDED else n for n in names for s in (shards if n in SHARDED else [None])}


REPORTS = ("attribution_eval", "reranked_scores", "influence_report")  # everything that reads the scores
CHECKED = ("attribution_eval", "influence_report")  # what reads the attribution check
EKFAC_ON = each(
    "ekfac_covariances",
    "ekfac_eigenbasis",
    "ekfac_lambdas",
    "ekfac_factors",
    "query_gradients",
    "influence_scores",
    *REPORTS,
)
GRADIENTS = EKFAC_ON | each("document_gradients")
EVERYTHING = GRADIENTS | each("model", "corpus_shards", "queries", "completions")
EXPLAINED = each("completions", "query_gradients", "influence_scores", *REPORTS)  # the generated completion changed
AFTER_FACTORS = each("ekfac_factors", "query_gradients", "influence_scores", *REPORTS)

# Each setting, a new value, and what a rerun must recompute (the README's invalidation table).
INVALIDATION = {
    "damping": (0.3, AFTER_FACTORS),
    "top_k": (3, each("influence_scores", *REPORTS)),
    "query_rank": (2, each("query_gradients", "influence_scores", *REPORTS)),
    "document_rank": (2, each("document_gradients", "influence_scores", *REPORTS)),
    "stored_gradient_dtype": ("bfloat16", each("document_gradients", "influence_scores", *REPORTS)),
    "projection": ([8, 8], each("query_gradients", "document_gradients", "influence_scores", *REPORTS)),
    "tail_patch_k": (3, each(*CHECKED)),
    "tail_patch_lr": (0.01, each(*CHECKED)),
    "rerank_k": (2, each("reranked_scores", "influence_report")),
    "fisher": ("empirical", EKFAC_ON),
    "fit_documents": (12, EKFAC_ON),  # a count: each shard's sample depends on every fit shard's ids
    "seed": (1, EKFAC_ON),  # the sampled Fisher's labels: new factors; unprojected gradients never read the seed
    "batch_size": (3, GRADIENTS | each("completions")),
    "dtype": ("bfloat16", GRADIENTS | each("completions")),
    "completion_tokens": (8, EXPLAINED),
    "completion_instruction": (" Step by step:", EXPLAINED),
    "completion_stop": (["\x07"], each("completions")),  # never written: the same bytes, nothing downstream
    "max_length": (24, EVERYTHING - each("model", "queries", "completions")),
    "layers": (["mlp.down_proj"], EVERYTHING - each("queries")),
    "trust_remote_code": (True, each("model")),  # validated again; its description is unchanged
    "fit_shards": ([A], AFTER_FACTORS | each("ekfac_eigenbasis") | {f"ekfac_lambdas[{A}]"}),
    "device": ("auto", set()),  # resolves to the CPU here: nothing changes
    # the fitting artefacts partitioned by layer group: refitted, and the factors they join the same bytes
    "layer_groups": (
        2,
        {f"{n}[{s}/group-{g}]" for n in ("ekfac_covariances", "ekfac_lambdas") for s in (A, B) for g in (0, 1)}
        | {f"ekfac_eigenbasis[group-{g}]" for g in (0, 1)}
        | each("ekfac_factors"),
    ),
    "factor_block_size": (16, EKFAC_ON),  # block-diagonal covariances: another eigenbasis
    "device_memory_gb": (64, set()),  # a limit the plan checks; nothing computed depends on it
    # recomputed blocks give the same bytes: nothing recomputes, and a clean run with it on matches
    "activation_checkpointing": (True, set()),
}


ORPHANED = {  # stored partitions a changed setting leaves behind
    "fit_shards": {f"ekfac_covariances[{B}]", f"ekfac_lambdas[{B}]"},  # no longer a fit shard
    "layer_groups": {f"{n}[{s}]" for n in ("ekfac_covariances", "ekfac_lambdas") for s in (A, B)}
    | {"ekfac_eigenbasis"},
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The tiny project after one complete run: (project folder, its storage snapshot)."""
    root = tmp_path_factory.mktemp("finished")
    config = load_config(make_project(root))
    ran = run_pipeline(config)
    assert set(ran) == EVERYTHING
    return root, snapshot(root / "data")


def copy_of(finished, tmp_path: Path, *, storage: bool = True) -> Path:
    """A copy of the finished project (its inputs, and its storage unless told otherwise)."""
    root, _ = finished
    shutil.copytree(root, tmp_path / "project", ignore=shutil.ignore_patterns(*([] if storage else ["data"])))
    return tmp_path / "project"


@pytest.mark.parametrize("key", sorted(INVALIDATION))
def test_a_changed_setting_recomputes_exactly_what_it_invalidates(key, finished, tmp_path):
    project = copy_of(finished, tmp_path)
    value, expected = INVALIDATION[key]
    edit_config(project / "pretrace.yaml", **{key: value})
    config = load_config(project / "pretrace.yaml")
    ran = run_pipeline(config)
    assert set(ran) == expected, f"{key}: ran {sorted(set(ran))}"
    assert len(ran) == len(set(ran)), "an artefact was computed twice"
    # What the change left behind is kept until `pretrace clean`, which then leaves a clean run's bytes.
    orphans = Project(config).orphans()
    assert {a.label(s) for a, s in orphans} == ORPHANED.get(key, set())
    for artefact, partition in orphans:
        Project(config).store.delete(artefact, partition)
    assert snapshot(project / "data") == clean_run_snapshot(config, tmp_path)
    assert run_pipeline(config) == []  # and then everything is current


def test_a_projection_in_the_eigenbasis_makes_document_gradients_follow_the_factors(finished, tmp_path):
    """Document gradients projected raw survive a refit; whitened and principal ones are projected
    in the factors' eigenbasis and are recomputed with them. Without a projection the basis means
    nothing."""
    project = copy_of(finished, tmp_path)
    path = project / "pretrace.yaml"
    steps = [
        ({"projection_basis": "raw"}, set()),
        ({"projection": [8, 8]}, each("query_gradients", "document_gradients", "influence_scores", *REPORTS)),
        ({"damping": 0.3}, AFTER_FACTORS),
        ({"projection_basis": "whitened"}, each("query_gradients", "document_gradients", "influence_scores", *REPORTS)),
        ({"damping": 0.5}, AFTER_FACTORS | each("document_gradients")),
        (
            {"projection_basis": "principal"},
            each("query_gradients", "document_gradients", "influence_scores", *REPORTS),
        ),
        ({"damping": 0.7}, AFTER_FACTORS | each("document_gradients")),
    ]
    for change, expected in steps:
        edit_config(path, **change)
        ran = run_pipeline(load_config(path))
        assert set(ran) == expected and len(ran) == len(set(ran)), f"{change}: ran {sorted(ran)}"
    config = load_config(path)
    assert snapshot(project / "data") == clean_run_snapshot(config, tmp_path)


@pytest.mark.parametrize("basis", ["principal", "whitened"])
def test_only_a_random_projection_makes_gradients_follow_the_seed(basis, finished, tmp_path):
    """A principal projection keeps chosen eigenvectors and draws nothing from the seed: with
    factors that do not depend on it either (empirical Fisher), a new seed refits to the same
    bytes and leaves the stored gradients current; a whitened one draws its matrices from the
    seed and recomputes them."""
    project = copy_of(finished, tmp_path)
    path = project / "pretrace.yaml"
    edit_config(path, projection=[8, 8], projection_basis=basis, fisher="empirical")
    run_pipeline(load_config(path))
    edit_config(path, seed=1)
    ran = set(run_pipeline(load_config(path)))
    gradients = each("query_gradients", "document_gradients")
    assert ran & gradients == (set() if basis == "principal" else gradients), sorted(ran)
    assert each("ekfac_covariances", "ekfac_lambdas") <= ran  # the seed is among the fitting passes' settings
    assert snapshot(project / "data") == clean_run_snapshot(load_config(path), tmp_path)


def test_moved_inputs_with_the_same_content_recompute_nothing(finished, tmp_path):
    project = copy_of(finished, tmp_path)
    for name in ("model", "corpus", "queries.jsonl"):
        (project / name).rename(project / f"moved-{name}")
    edit_config(project / "pretrace.yaml", model="moved-model", corpus="moved-corpus", queries="moved-queries.jsonl")
    assert run_pipeline(load_config(project / "pretrace.yaml")) == []


def test_a_wiped_storage_root_is_recomputed_whatever_the_instance_remembers(finished, tmp_path):
    project = copy_of(finished, tmp_path)
    config = load_config(project / "pretrace.yaml")
    instance = dg.DagsterInstance.ephemeral()
    assert run_pipeline(config, instance) == []
    shutil.rmtree(project / "data")
    assert set(run_pipeline(config, instance)) == EVERYTHING
    assert snapshot(project / "data") == finished[1]


def test_an_artefact_file_deleted_from_storage_is_missing(finished, tmp_path):
    project = copy_of(finished, tmp_path)
    (project / "data" / "document_gradients" / f"{B}.safetensors").unlink()
    ran = run_pipeline(load_config(project / "pretrace.yaml"))
    assert ran == [f"document_gradients[{B}]"]  # recomputed to the same bytes: nothing downstream
    assert snapshot(project / "data") == finished[1]


def corrupt(path: Path, old: bytes, new: bytes) -> None:
    """Change bytes in place, keeping the file's size and modification time (as bit rot, or an
    edit that restores the mtime, would)."""
    data, stat = path.read_bytes(), path.stat()
    assert len(old) == len(new) and old in data
    path.write_bytes(data.replace(old, new, 1))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def last_bytes_flipped(path: Path) -> tuple[bytes, bytes]:
    """(old, new) that change one byte near the end of a file (a tensor's data in safetensors)."""
    data = path.read_bytes()
    return data[-5:], data[-5:-4] + bytes([data[-4] ^ 1]) + data[-3:]


@pytest.mark.parametrize(
    ("key", "change", "recomputed"),
    [
        # a final artefact that still reads: query id `capital` becomes `bapital` in every row
        (f"influence_scores/{A}.parquet", (b"capital", b"bapital"), [f"influence_scores[{A}]"]),
        # an intermediate one: one number of the preconditioner
        ("ekfac_factors/factors.safetensors", None, ["ekfac_factors"]),
    ],
)
def test_a_same_size_corruption_is_recomputed_to_a_clean_runs_bytes(key, change, recomputed, finished, tmp_path):
    project = copy_of(finished, tmp_path)
    config = load_config(project / "pretrace.yaml")
    assert run_pipeline(config) == []  # the copy's digests are taken once, then kept by stamp
    path = project / "data" / key
    corrupt(path, *(change or last_bytes_flipped(path)))
    artefact, shard = recomputed[0].removesuffix("]").partition("[")[::2]
    status = Project(config).status(artefact, shard or None)
    assert (status.state, status.reason) == ("missing", f"damaged: {key} is not the bytes its manifest records")
    assert run_pipeline(config) == recomputed  # recomputed to the same bytes: nothing downstream
    assert snapshot(project / "data") == finished[1]


def test_verify_names_a_damaged_artefact_and_exits_non_zero(finished, tmp_path):
    project = copy_of(finished, tmp_path)
    clean = pretrace("verify", "--config", "pretrace.yaml", cwd=project)
    assert clean.returncode == 0 and "every stored file holds the bytes its manifest records" in clean.stdout
    path = project / "data" / "document_gradients" / f"{B}.safetensors"
    corrupt(path, *last_bytes_flipped(path))
    damaged = pretrace("verify", "--config", "pretrace.yaml", cwd=project)
    assert damaged.returncode == 1, damaged.stdout + damaged.stderr
    line = f"missing  document_gradients[{B}]  (damaged: document_gradients/{B}.safetensors is not the bytes"
    assert line in damaged.stdout
    assert "1 damaged artefact(s); `pretrace run` recomputes them" in damaged.stderr


def kill_at(prefix: str, nth: int, project: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """`pretrace run` as a user runs it, SIGKILLed as it starts writing the nth file whose key
    starts with ``prefix`` (tests/pipeline/kill_at.py)."""
    harness = Path(__file__).with_name("kill_at.py")
    env = {"DAGSTER_HOME": str(project / ".dagster_home"), **(env or {})}
    return subprocess.run(
        [sys.executable, str(harness), prefix, str(nth), "run", "--config", "pretrace.yaml"],
        cwd=project,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def materialized(result: subprocess.CompletedProcess) -> list[str]:
    """The artefact partitions a `pretrace run` started materializing, from its output."""
    return [line.split(" ")[2] for line in result.stdout.splitlines() if line.startswith("[pretrace] materializing")]


def assert_killed(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == -signal.SIGKILL, (result.returncode, result.stderr[-3000:])


def left_started(project: Path) -> list:
    """The runs, and the `pretrace run` backfills, still marked in progress."""
    from dagster._core.execution.backfill import BulkActionsFilter, BulkActionStatus

    with dg.DagsterInstance.from_config(str(project / ".dagster_home")) as instance:
        backfills = instance.get_backfills(filters=BulkActionsFilter(statuses=[BulkActionStatus.REQUESTED]))
        return [*instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])), *backfills]


def test_a_new_query_then_a_kill_during_influence_scores(finished, tmp_path):
    project = copy_of(finished, tmp_path)
    with open(project / "queries.jsonl", "a") as f:
        f.write('{"id": "new", "kind": "arithmetic", "prompt": "(7 - 4) * 8 =", "completion": " 24", "answer": "24"}\n')
    # Killed as it writes the second file of part-b's scores: part-a already scored with the
    # new query, part-b's old scores half replaced.
    assert_killed(kill_at(f"influence_scores/{B}", 2, project))
    assert (project / "data" / "influence_scores" / f"{A}.manifest.json").exists()
    assert not (project / "data" / "influence_scores" / f"{B}.manifest.json").exists()
    assert len(left_started(project)) == 2  # the run and its backfill

    rerun = pretrace("run", "--config", "pretrace.yaml", cwd=project)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "marked failed" in rerun.stdout and not left_started(project)
    assert materialized(rerun) == [f"influence_scores[{B}]", *REPORTS]
    config = load_config(project / "pretrace.yaml")
    assert snapshot(project / "data") == clean_run_snapshot(config, tmp_path)


def test_a_new_model_then_a_kill_during_ekfac_fitting(finished, tmp_path):
    from pretrace.testing.tiny import tiny_model

    project = copy_of(finished, tmp_path)
    tiny_model("llama", seed=99).save_pretrained(project / "model")  # retrained weights, same shapes
    killed = kill_at(f"ekfac_lambdas/{A}", 1, project)
    assert_killed(killed)
    info = yaml.safe_load((project / "data" / "model" / "model.json").read_text())
    assert (
        info["fingerprint"]
        != yaml.safe_load((finished[0] / "data" / "model" / "model.json").read_text())["fingerprint"]
    )
    *committed, dying = materialized(killed)
    assert dying == f"ekfac_lambdas[{A}]"

    rerun = pretrace("run", "--config", "pretrace.yaml", cwd=project)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    # Nothing the killed run committed is redone; everything else the new model invalidated is.
    assert set(materialized(rerun)) == EVERYTHING - each("queries") - set(committed)
    assert snapshot(project / "data") == clean_run_snapshot(load_config(project / "pretrace.yaml"), tmp_path)


def test_a_renamed_corpus_file_is_counted_once_and_its_old_shard_cleaned(finished, tmp_path):
    project = copy_of(finished, tmp_path)
    (project / "corpus" / B).rename(project / "corpus" / "part-c.jsonl")
    config = load_config(project / "pretrace.yaml")
    run_pipeline(config)
    assert (project / "data" / "influence_scores" / f"{B}.parquet").exists()  # kept until cleaned...
    status = pretrace("status", "--config", "pretrace.yaml", cwd=project)
    assert f"orphan   document_gradients[{B}]" in status.stdout
    report = (project / "data" / "influence_report" / "manifest.json").read_text()
    assert B not in report and "part-c.jsonl" in report  # ...but not in the report
    cleaned = pretrace("clean", "--config", "pretrace.yaml", cwd=project)
    assert cleaned.returncode == 0, cleaned.stderr[-2000:]
    assert f"influence_scores/{B}.parquet" in cleaned.stdout
    assert snapshot(project / "data") == clean_run_snapshot(config, tmp_path)


def test_content_decides_not_modification_times(finished, tmp_path):
    project = copy_of(finished, tmp_path)
    config = load_config(project / "pretrace.yaml")
    path = project / "corpus" / A
    # A copy that rounds modification times (as FAT, rsync without -t, or cp do): no change.
    for file in (project / "corpus").iterdir():
        stat = file.stat()
        os.utime(file, ns=(stat.st_atime_ns, stat.st_mtime_ns // 10**9 * 10**9 + 10**9))
    assert run_pipeline(config) == []
    # Rewritten in place with its modification time kept (as cp -p or rsync -t leave it).
    stat = path.stat()
    write_corpus_file(path, 14, 7, "a")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_mtime_ns == stat.st_mtime_ns
    ran = run_pipeline(config)
    assert f"corpus_shards[{A}]" in ran and f"corpus_shards[{B}]" not in ran
    assert snapshot(project / "data") == clean_run_snapshot(config, tmp_path)


def _report_queries(storage: Path) -> set[str]:
    import pyarrow.parquet as pq

    return set(pq.read_table(storage / "influence_report" / "top_documents.parquet").column("query_id").to_pylist())


def test_two_projects_on_one_storage_root_never_publish_a_mixed_report(finished, tmp_path):
    """Project `other` explains other queries from its own instance, writing the same root."""
    project = copy_of(finished, tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    (other / "queries.jsonl").write_text(
        '{"id": "other", "kind": "factual", "prompt": "The capital of Peru is", "completion": " Lima."}\n'
    )
    config = yaml.safe_load((project / "pretrace.yaml").read_text())
    (other / "pretrace.yaml").write_text(
        yaml.safe_dump(
            {
                **config,
                **{k: str(project / config[k]) for k in ("model", "corpus", "storage")},
                "queries": "queries.jsonl",
            }
        )
    )
    mine = {q["id"] for q in QUERIES}

    # One after the other: each run makes the root its own project's clean state.
    for folder, ids in ((other, {"other"}), (project, mine)):
        result = pretrace("run", "--config", "pretrace.yaml", cwd=folder)
        assert result.returncode == 0, result.stderr[-3000:]
        assert _report_queries(project / "data") == ids

    # At the same time: a run may refuse, naming the other writer, but a report is never mixed.
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "pretrace.pipeline.cli", "run", "--config", "pretrace.yaml"],
            cwd=folder,
            env={**os.environ, "DAGSTER_HOME": str(folder / ".dagster_home")},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for folder in (other, project)
    ]
    for run in runs:
        _, err = run.communicate(timeout=300)
        assert (
            run.returncode == 0
            or "another run or another project is writing" in err
            or "two projects cannot share a storage root" in err  # on one machine, one run per root at a time
            or "is stale" in err
            or "is missing" in err
        ), err[-3000:]
    assert _report_queries(project / "data") in ({"other"}, mine)

    result = pretrace("run", "--config", "pretrace.yaml", cwd=project)
    assert result.returncode == 0, result.stderr[-3000:]
    assert snapshot(project / "data") == clean_run_snapshot(load_config(project / "pretrace.yaml"), tmp_path)


def test_a_temporary_left_by_a_killed_writer_is_removed_by_the_next_run(finished, tmp_path):
    project = copy_of(finished, tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname().replace(".", "_")
    folder = project / "data" / "influence_scores"
    leftover, live = (
        folder / f".pretrace-tmp.{host}.{dead.pid}.{A}.parquet.x1",
        folder / f".pretrace-tmp.{host}.{os.getpid()}.{A}.parquet.x2",
    )
    leftover.write_bytes(b"half a file")
    live.write_bytes(b"a live writer's")
    assert run_pipeline(load_config(project / "pretrace.yaml")) == []
    assert not leftover.exists() and live.exists()


def test_files_pretrace_did_not_write_are_kept_through_run_and_clean(finished, tmp_path):
    """Only pretrace's own temporaries and manifests are removed: a user's old `.tmp-` file, a
    name that merely starts like pretrace's, and a manifest-like file in a user's subfolder stay."""
    project = copy_of(finished, tmp_path)
    data = project / "data"
    (data / "notes").mkdir()
    mine = [
        data / ".tmp-draft.txt",
        data / "influence_scores" / ".pretrace-tmp.not-a-writer-tag",
        data / "influence_scores" / "notes" / "mine.manifest.json",
        data / "notes" / "x.manifest.json",
    ]
    for path in mine:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")
        os.utime(path, (0, 0))  # older than any age limit
    assert run_pipeline(load_config(project / "pretrace.yaml")) == []
    cleaned = pretrace("clean", "--config", "pretrace.yaml", cwd=project)
    assert cleaned.returncode == 0, cleaned.stderr[-3000:]
    assert all(path.exists() for path in mine), [str(p) for p in mine if not p.exists()]


def test_a_bad_corpus_file_is_named_by_everything_that_waits_on_it_until_left_out(finished, tmp_path):
    """Its partition fails with the file and line; status names that failure up the chain (not
    "not in storage"); `exclude_files` lets the rest go on, and the project says the file is left
    out; a fixed file is tried again and its failure record goes."""
    root = copy_of(finished, tmp_path)
    bad = root / "corpus" / "part-c.jsonl"
    bad.write_text('{"id": "c-1", "text": "fine"}\n{"id": "c-2", "text": 7}\n')
    config = load_config(root / "pretrace.yaml")
    defs, instance = build_definitions(config), dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("shard", ["part-c.jsonl"])
    result = dg.materialize(
        executable(defs),
        selection=["corpus_shards"],
        partition_key="part-c.jsonl",
        instance=instance,
        resources=defs.resources,
        raise_on_error=False,
    )
    assert not result.success
    project = Project(config)
    status = project.status("corpus_shards", "part-c.jsonl")
    assert status.state == "missing" and status.reason.startswith(f"failed: {bad}, line 2: ")
    assert status.reason.endswith("; to go on without part-c.jsonl, list it in `exclude_files`")
    waiting = project.status("ekfac_eigenbasis")
    assert waiting.state == "waiting" and "corpus_shards[part-c.jsonl] is missing (failed: " in waiting.reason

    edit_config(root / "pretrace.yaml", exclude_files=["part-c.jsonl"])
    left_out = Project(load_config(root / "pretrace.yaml"))
    assert left_out.shards == [A, B] and left_out.left_out == ["part-c.jsonl: left out by `exclude_files`"]
    report = left_out.status("influence_report")
    assert report.state == "stale" and report.reason == "`exclude_files` [] -> ['part-c.jsonl']"
    assert run_pipeline(load_config(root / "pretrace.yaml")) == ["influence_report"]  # the rest is as it was
    page = (root / "data" / "influence_report" / "report.html").read_text()
    assert "Left out (`exclude_files`): part-c.jsonl" in page

    edit_config(root / "pretrace.yaml", exclude_files=[])
    write_corpus_file(bad, 6, 3, "c")  # fixed
    fixed = Project(load_config(root / "pretrace.yaml"))
    assert fixed.status("corpus_shards", "part-c.jsonl").reason == "not in storage"
    assert (root / "data" / "corpus_shards" / "part-c.jsonl.failed.json").exists()
    defs = build_definitions(load_config(root / "pretrace.yaml"))
    dg.materialize(
        executable(defs),
        selection=["corpus_shards"],
        partition_key="part-c.jsonl",
        instance=instance,
        resources=defs.resources,
    )
    assert not (root / "data" / "corpus_shards" / "part-c.jsonl.failed.json").exists()


def test_exclude_files_naming_no_file_is_refused(finished, tmp_path):
    root = copy_of(finished, tmp_path, storage=False)
    edit_config(root / "pretrace.yaml", exclude_files=["nope.jsonl"])
    with pytest.raises(InputError, match=r"exclude_files: 'nope.jsonl' is not a file of .*; remove it from"):
        Project(load_config(root / "pretrace.yaml")).status("corpus_shards", A)
