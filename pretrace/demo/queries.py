"""The demo queries: factual, three reasoning tasks, and unrelated controls.

Factual queries ask for facts the corpus states in several wordings; reasoning queries are
worked in the corpus's numbered-steps style on problems held out of the corpus, so only the
procedure, never the result, can be found in a document.
"""

from __future__ import annotations

import random
from pathlib import Path

from pretrace.demo import facts, procedures
from pretrace.demo.files import write_records

PER_KIND = 8
KINDS = ("factual", *procedures.TASKS, "control")
# (prompt, completion) continuations of everyday English and Python, unrelated to facts or maths;
# each completion starts a new pre-token, so tokenizing prompt + completion splits at the seam.
_CONTROLS = (
    ("The opposite of hot is", " cold."),
    ("Monday, Tuesday,", " Wednesday."),
    ("Once upon a", " time."),
    ("Red, green and", " blue."),
    ("The cat sat on the", " mat."),
    ("def add(a, b):\n    return", " a + b"),
    ("for i in range(10):\n    print(", "i)"),
    ("The sun rises in the", " east."),
    ("import numpy as", " np"),
    ("class Point:\n    def __init__(self, x, y):\n        self.x =", " x"),
)


def _answer(completion: str) -> str:
    """The bare answer of a one-word continuation: " Paris." -> "Paris"."""
    return completion.strip().removesuffix(".")


def _factual(rng: random.Random) -> list[dict[str, object]]:
    countries = rng.sample(facts.well_known(), PER_KIND)
    rows = []
    for i, country in enumerate(countries):
        relation = facts.RELATIONS[i % len(facts.RELATIONS)]
        prompt, completion = facts.fact(country, relation)
        rows.append({"id": f"factual-{i}", "kind": "factual", "prompt": prompt, "completion": completion,
                     "answer": _answer(completion), "intermediates": []})
    return rows


def _reasoning(task: str, rng: random.Random) -> list[dict[str, object]]:
    return [
        {"id": f"{task}-{i}", "kind": task, "prompt": procedures.steps_prompt(p),
         "completion": procedures.steps_solution(p), "answer": p.answer, "intermediates": list(p.intermediates)}
        for i, p in enumerate(procedures.sample_problems(task, PER_KIND, rng, held_out=True))
    ]


def _control(rng: random.Random) -> list[dict[str, object]]:
    return [
        {"id": f"control-{i}", "kind": "control", "prompt": prompt, "completion": completion,
         "answer": _answer(completion), "intermediates": []}
        for i, (prompt, completion) in enumerate(rng.sample(_CONTROLS, PER_KIND))
    ]


def build_demo_queries(path: Path, *, seed: int = 0) -> Path:
    """Write PER_KIND queries of each of KINDS as JSONL to path.

    Records: id, kind, prompt, completion, answer, intermediates (the intermediate results of
    a reasoning query's procedure; empty for the other kinds, so every record has one schema).
    """
    rows = [
        *_factual(random.Random(f"{seed}:factual")),
        *(row for task in procedures.TASKS for row in _reasoning(task, random.Random(f"{seed}:{task}"))),
        *_control(random.Random(f"{seed}:control")),
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_records(path, rows)
