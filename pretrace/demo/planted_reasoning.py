"""Planted reasoning: worked solutions of a few held-out problems, each planted a known number of
times, so that the answer search has a positive control.

Ruis et al. found that the answers to reasoning queries rarely appear among their most
influential documents. A search that finds nothing is only evidence if it would have found
retrieval where it happens. Here it does happen by construction: each planted problem's worked
solution (stating its step results and answer) sits in the corpus 1, 3 or 10 times, in the
corpus's styles, and a query poses that problem. The queries carry `evidence` and
`planted_frequency` as the planted facts do, and kind `planted_reasoning` (a planted kind,
never pooled with the reasoning kinds), so the attribution check and the answer search's
detection rate read them like any planted ground truth.
"""

from __future__ import annotations

import random

from pretrace.demo import procedures
from pretrace.demo.planted import FREQUENCIES

KIND = "planted_reasoning"
PER_FREQUENCY = 2
"""Planted problems per task and frequency."""
# Openings that make each copy of a solution a distinct document, as repeated worked examples
# are in real corpora (an answer key, a forum post, a textbook).
_OPENINGS = (
    "",
    "Worked example.\n",
    "From the answer key:\n",
    "Homework help\n",
    "Exercise solution.\n",
    "Practice problem, solved:\n",
    "Textbook example\n",
    "Revision notes.\n",
    "Tutorial, part 2.\n",
    "Example from class:\n",
)


def planted_problems(seed: int = 0) -> list[tuple[str, procedures.Problem, int]]:
    """(evidence key, problem, frequency) per planted problem: held-out problems none of the
    reasoning queries pose, PER_FREQUENCY per task and frequency (deterministic)."""
    planted = []
    for task in procedures.TASKS:
        asked = {p.key for p in procedures.query_problems(task, seed)}
        rng = random.Random(f"{seed}:planted-reasoning:{task}")
        n = PER_FREQUENCY * len(FREQUENCIES)
        pool = [p for p in procedures.sample_problems(task, n + len(asked), rng, held_out=True) if p.key not in asked]
        for i, problem in enumerate(pool[:n]):
            planted.append((f"{KIND}/{task}/{i}", problem, FREQUENCIES[i % len(FREQUENCIES)]))
    return planted


def planted_reasoning_documents(seed: int = 0) -> list[dict[str, object]]:
    """`frequency` worked solutions of each planted problem, cycling through the corpus's styles."""
    rng = random.Random(f"{seed}:planted-reasoning-documents")
    records = []
    for key, problem, frequency in planted_problems(seed):
        for i in range(frequency):
            style = procedures.STYLES[i % len(procedures.STYLES)]
            records.append(
                {
                    "id": f"{key}/{i}",
                    "text": _OPENINGS[i] + procedures.render_procedure(problem, style, rng),
                    "source": KIND,
                    "task": problem.task,
                    "style": style,
                    "problem": problem.key,
                    "evidence": key,
                }
            )
    return records


def planted_reasoning_queries(seed: int = 0) -> list[dict[str, object]]:
    """One query per planted problem, posed and worked as the reasoning queries are; its worked
    solution is given (the ground truth is which documents state it), as for planted facts."""
    return [
        {
            "id": key.replace("/", "-"),
            "kind": KIND,
            "prompt": procedures.steps_prompt(problem),
            "completion": procedures.steps_solution(problem),
            "answer": problem.answer,
            "intermediates": list(problem.intermediates),
            "stop": [],
            "evidence": key,
            "planted_frequency": frequency,
        }
        for key, problem, frequency in planted_problems(seed)
    ]
