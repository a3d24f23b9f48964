"""The demo queries: factual, three reasoning tasks, unrelated controls, and questions about
the planted facts (`pretrace.demo.planted`).

Factual queries ask for facts the corpus states in several wordings; reasoning queries are
worked in the corpus's numbered-steps style on problems held out of the corpus, so only the
procedure, never the result, can be found in a document.
"""

from __future__ import annotations

import random
from pathlib import Path

from pretrace.demo import facts, procedures
from pretrace.demo.files import write_records
from pretrace.demo.planted import planted_queries

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


def _query(
    qid: str,
    kind: str,
    prompt: str,
    completion: str,
    answer: str,
    intermediates: tuple[str, ...] = (),
) -> dict[str, object]:
    return {
        "id": qid,
        "kind": kind,
        "prompt": prompt,
        "completion": completion,
        "answer": answer,
        "intermediates": list(intermediates),
    }


def _answer(completion: str) -> str:
    """The bare answer of a one-word continuation: " Paris." -> "Paris"."""
    return completion.strip().removesuffix(".")


def _factual(rng: random.Random) -> list[dict[str, object]]:
    """Alternating relations (capital, continent, currency) of well-known countries."""
    rows = []
    for i, country in enumerate(rng.sample(facts.well_known(), PER_KIND)):
        prompt, completion = facts.fact(country, facts.RELATIONS[i % len(facts.RELATIONS)])
        rows.append(_query(f"factual-{i}", "factual", prompt, completion, _answer(completion)))
    return rows


def _reasoning(task: str, rng: random.Random) -> list[dict[str, object]]:
    problems = procedures.sample_problems(task, PER_KIND, rng, held_out=True)
    return [
        _query(
            f"{task}-{i}",
            task,
            procedures.steps_prompt(p),
            procedures.steps_solution(p),
            p.answer,
            p.intermediates,
        )
        for i, p in enumerate(problems)
    ]


def _control(rng: random.Random) -> list[dict[str, object]]:
    pairs = rng.sample(_CONTROLS, PER_KIND)
    return [
        _query(f"control-{i}", "control", prompt, completion, _answer(completion))
        for i, (prompt, completion) in enumerate(pairs)
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
        *planted_queries(seed),
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_records(path, rows)
