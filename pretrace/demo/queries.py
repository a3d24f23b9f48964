"""The demo queries: factual, three reasoning tasks, controls of Ruis et al.'s kind, and
questions about the planted facts (`pretrace.demo.planted`).

Factual queries ask for facts the corpus states in several wordings; reasoning queries are
worked in the corpus's numbered-steps style on problems held out of the corpus, so only the
procedure, never the result, can be found in a document. Controls have the surface form of a
factual query ("The capital of X is") or of a reasoning one ("Problem: ... Step 1: ...
Answer:") but state their answer in the prompt, so they need neither a stored fact nor a
procedure: `factual_control` and `reasoning_control`, read apart as Ruis et al. read theirs.
"""

from __future__ import annotations

import random
from pathlib import Path

from pretrace.demo import facts, procedures
from pretrace.demo.files import write_records
from pretrace.demo.planted import planted_queries
from pretrace.demo.planted_reasoning import planted_reasoning_queries

PER_KIND = procedures.QUERIES_PER_TASK
PER_CONTROL_KIND = PER_KIND // 2
CONTROL_KINDS = ("factual_control", "reasoning_control")
KINDS = ("factual", *procedures.TASKS, *CONTROL_KINDS)
# Invented places and people: nothing the corpus states, so a control's answer can only be read
# off its own prompt.
_PLACES = ("Vostria", "Quellmark", "Ardenvale", "Tirnossa", "Belmuir", "Ostrevan", "Kalvoria", "Drumhollow")
_CITIES = ("Pelleron", "Marrowby", "Suthcliff", "Evanlow", "Corrisand", "Hadleith", "Wynmere", "Tolvarra")
_THINGS = ("apples", "boxes", "coins", "books", "chairs", "stamps", "shells", "cards")


def per_kind(kind: str) -> int:
    """How many demo queries a kind has."""
    return PER_CONTROL_KIND if kind in CONTROL_KINDS else PER_KIND


def _query(
    qid: str,
    kind: str,
    prompt: str,
    completion: str,
    answer: str,
    intermediates: tuple[str, ...] = (),
) -> dict[str, object]:
    """A query the model answers itself (no `completion`: Ruis et al. explain the model's own
    completions); `reference` keeps the worked answer for a reader. A one-sentence answer ends
    at its full stop; a worked solution at the model's end-of-sequence token."""
    return {
        "id": qid,
        "kind": kind,
        "prompt": prompt,
        "reference": completion,
        "answer": answer,
        "intermediates": list(intermediates),
        "stop": [] if "\n" in completion else ["."],
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


def _reasoning(task: str, seed: int) -> list[dict[str, object]]:
    problems = procedures.query_problems(task, seed)
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


def _controls(rng: random.Random) -> list[dict[str, object]]:
    """Controls of both forms: a factual query's and a reasoning query's, the answer stated in the prompt."""
    rows = []
    for i, (place, city) in enumerate(
        zip(rng.sample(_PLACES, PER_CONTROL_KIND), rng.sample(_CITIES, PER_CONTROL_KIND))
    ):
        prompt = f"The capital of {place} is {city}. The capital of {place} is"
        rows.append(_query(f"factual_control-{i}", "factual_control", prompt, f" {city}.", city))
    for i, thing in enumerate(rng.sample(_THINGS, PER_CONTROL_KIND)):
        n = str(rng.randint(10, 99))
        prompt = f"Problem: A shelf holds {n} {thing}. How many {thing} does the shelf hold?\n"
        completion = f"Step 1: The shelf holds {n} {thing}.\nAnswer: {n}"
        rows.append(_query(f"reasoning_control-{i}", "reasoning_control", prompt, completion, n))
    return rows


def build_demo_queries(path: Path, *, seed: int = 0) -> Path:
    """Write `per_kind` queries of each of KINDS as JSONL to path.

    Records: id, kind, prompt, reference (a correct completion, for readers: the model writes
    the one explained), answer, intermediates (the intermediate results of a reasoning query's
    procedure; empty for the other kinds, so every record has one schema) and stop.
    """
    rows = [
        *_factual(random.Random(f"{seed}:factual")),
        *(row for task in procedures.TASKS for row in _reasoning(task, seed)),
        *_controls(random.Random(f"{seed}:control")),
        *planted_queries(seed),
        *planted_reasoning_queries(seed),
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_records(path, rows)
