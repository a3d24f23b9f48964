"""A tiny user project on disk (checkpoint, two corpus files, queries, pretrace.yaml) and the
ways tests run it and compare what it stored."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from pretrace.config import PretraceConfig
from pretrace.demo.files import write_records
from pretrace.pipeline.runner import run_in_process as run_pipeline
from pretrace.store.storage import Storage
from pretrace.testing.tiny import SENTENCES, tiny_model, tiny_tokenizer

QUERIES = [
    {
        "id": "capital",
        "kind": "factual",
        "prompt": "The capital of France is",
        "completion": " Paris.",
        "answer": "Paris",
    },
    # no completion: the model writes it (the `completions` asset)
    {"id": "slope", "kind": "slope", "prompt": "The slope between (1, 2) and (3, 8) is", "answer": "3"},
    {"id": "code", "kind": "control", "prompt": "def add(a, b):", "completion": "\n    return a + b", "answer": ""},
]


def write_corpus_file(path: Path, n: int, seed: int, prefix: str) -> Path:
    rng = random.Random(seed)
    rows = [
        {"id": f"{prefix}-{i}", "text": " ".join(rng.sample(SENTENCES, 2)), "source": rng.choice(["prose", "math"])}
        for i in range(n)
    ]
    return write_records(path, rows)


def make_project(root: Path, storage: str | None = None, **settings) -> Path:
    """Write the project under root and return the path of its pretrace.yaml."""
    tiny_model("llama", seed=3).save_pretrained(root / "model")
    tiny_tokenizer().save_pretrained(root / "model")
    (root / "corpus").mkdir()
    write_corpus_file(root / "corpus" / "part-a.jsonl", 14, 1, "a")
    write_corpus_file(root / "corpus" / "part-b.jsonl", 10, 2, "b")
    write_records(root / "queries.jsonl", QUERIES)
    config = {
        "model": "model",
        "corpus": "corpus",
        "queries": "queries.jsonl",
        "storage": storage or "data",
        "device": "cpu",
        "batch_size": 4,
        "max_length": 32,
        "top_k": 5,
        **settings,
    }
    (root / "pretrace.yaml").write_text(yaml.safe_dump(config))
    return root / "pretrace.yaml"


def edit_config(path: Path, **changes) -> None:
    """Change settings of a pretrace.yaml in place."""
    config = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**config, **changes}))


def pretrace(*args, cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`pretrace ...` as a user runs it, in a subprocess with its own DAGSTER_HOME under cwd."""
    env = {**os.environ, "DAGSTER_HOME": str(cwd / ".dagster_home"), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "pretrace.pipeline.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# The report's page carries the time it was made (a compared model's report's too, under
# models/<name>/); its tables, figures and every other artefact must be byte-identical between
# two runs of the same state.
_TIMESTAMPED = ("influence_report/report.html", "influence_report/manifest.json")


def snapshot(storage: Path | str) -> dict[str, str]:
    """SHA-256 of every file under a storage root (a folder or an s3:// URL) but the report page
    (and its manifest), temporaries included: a leftover would show."""
    store = Storage(str(storage))
    root = store.url().removeprefix("s3://")
    found = store.fs.find(root)
    start = len(root) + 1
    return {
        path[start:]: hashlib.sha256(store.fs.cat_file(path)).hexdigest()
        for path in sorted(found)
        if not path[start:].endswith(_TIMESTAMPED)
    }


def clean_run_snapshot(config: PretraceConfig, scratch: Path | str) -> dict[str, str]:
    """The storage a clean run of ``config`` ends in: fresh storage root (a folder under, or a
    prefix of, ``scratch``), fresh instance."""
    storage = f"{scratch}/clean-storage"
    if "://" not in storage:
        shutil.rmtree(storage, ignore_errors=True)
    run_pipeline(config.model_copy(update={"storage": storage}))
    return snapshot(storage)
