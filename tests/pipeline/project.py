"""A tiny user project on disk: checkpoint, two corpus files, queries and pretrace.yaml."""

from __future__ import annotations

import random
from pathlib import Path

import yaml

from pretrace.demo.files import write_records
from tests.tiny import SENTENCES, tiny_model, tiny_tokenizer

QUERIES = [
    {"id": "capital", "kind": "factual", "prompt": "The capital of France is", "completion": " Paris.", "answer": "Paris"},
    {"id": "slope", "kind": "slope", "prompt": "The slope between (1, 2) and (3, 8) is", "completion": " 3.", "answer": "3"},
    {"id": "code", "kind": "control", "prompt": "def add(a, b):", "completion": "\n    return a + b", "answer": ""},
]


def write_corpus_file(path: Path, n: int, seed: int, prefix: str) -> Path:
    rng = random.Random(seed)
    rows = [{"id": f"{prefix}-{i}", "text": " ".join(rng.sample(SENTENCES, 2)), "source": rng.choice(["prose", "math"])}
            for i in range(n)]
    return write_records(path, rows)


def make_project(root: Path, storage: str | None = None, **settings) -> Path:
    """Write the project under root and return the path of its pretrace.yaml."""
    tiny_model("llama", seed=3).save_pretrained(root / "model")
    tiny_tokenizer().save_pretrained(root / "model")
    (root / "corpus").mkdir()
    write_corpus_file(root / "corpus" / "part-a.jsonl", 14, 1, "a")
    write_corpus_file(root / "corpus" / "part-b.jsonl", 10, 2, "b")
    write_records(root / "queries.jsonl", QUERIES)
    config = {"model": "model", "corpus": "corpus", "queries": "queries.jsonl", "storage": storage or "data",
              "device": "cpu", "batch_size": 4, "max_length": 32, "top_k": 5, **settings}
    (root / "pretrace.yaml").write_text(yaml.safe_dump(config))
    return root / "pretrace.yaml"
