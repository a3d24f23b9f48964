"""Worked solutions of the demo's reasoning tasks, shared by the corpus and the queries.

The corpus teaches each procedure on many problems, in several styles; the queries pose the
same kinds of problems with numbers that never occur in the corpus, so that, as in Ruis et
al. (2024), a query's answer cannot simply be looked up in a document.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass
from typing import ClassVar, Protocol

TASKS = ("arithmetic", "slope", "linear")
STYLES = ("prose", "code", "steps")
_HELD_OUT_BUCKETS = 8
QUERIES_PER_TASK = 8


class Problem(Protocol):
    """What every task's problem offers to the generic renderers below."""

    task: ClassVar[str]

    @property
    def key(self) -> str:
        """The problem's numbers as written in every rendering, e.g. "(7 - 4) * 8"."""

    @property
    def answer(self) -> str: ...

    @property
    def intermediates(self) -> tuple[str, ...]: ...

    @property
    def operations(self) -> tuple[str, ...]:
        """The one-operation equations its solution writes, e.g. ("16 - 8 = 8", "8 / 2 = 4")."""

    def question(self) -> str: ...

    def steps(self) -> list[str]: ...

    def prose(self, rng: random.Random) -> str: ...

    def code(self, rng: random.Random) -> str: ...

    def result(self, rng: random.Random) -> str: ...


def _signed(n: int) -> str:
    """A number as the right operand of a subtraction: 8 - (-2), not 8 - -2."""
    return f"({n})" if n < 0 else str(n)


_APPLY = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y}
_DO = {"+": "add {y} to {x}", "-": "subtract {y} from {x}", "*": "multiply {x} by {y}"}


@dataclass(frozen=True)
class Arithmetic:
    """(a op1 b) op2 c: two operations whose order the brackets decide."""

    a: int
    op1: str
    b: int
    op2: str
    c: int
    task: ClassVar[str] = "arithmetic"

    @classmethod
    def sample(cls, rng: random.Random) -> Arithmetic:
        op1, op2 = rng.choice("+-"), rng.choice("*+-")
        a, b = rng.randint(2, 9), rng.randint(1, 9)
        if op1 == "-" and a <= b:
            a, b = b + 1, a
        return cls(a, op1, b, op2, rng.randint(2, 9))

    @property
    def key(self) -> str:
        return f"({self.a} {self.op1} {self.b}) {self.op2} {self.c}"

    @property
    def inner(self) -> int:
        return _APPLY[self.op1](self.a, self.b)

    @property
    def value(self) -> int:
        return _APPLY[self.op2](self.inner, self.c)

    @property
    def answer(self) -> str:
        return str(self.value)

    @property
    def intermediates(self) -> tuple[str, ...]:
        return (str(self.inner),)

    @property
    def operations(self) -> tuple[str, ...]:
        return (f"{self.a} {self.op1} {self.b} = {self.inner}", f"{self.inner} {self.op2} {self.c} = {self.value}")

    def question(self) -> str:
        return f"Calculate {self.key}."

    def steps(self) -> list[str]:
        do = _DO[self.op2].format(x=self.inner, y=self.c)
        brackets, outer = self.operations
        return [f"Work out the brackets first: {brackets}.", f"Then {do}: {outer}."]

    def prose(self, rng: random.Random) -> str:
        do = _DO[self.op2].format(x=self.inner, y=self.c)
        bracket = f"{self.a} {self.op1} {self.b}"
        return rng.choice(
            [
                f"To evaluate {self.key}, start inside the brackets: {bracket} is {self.inner}. "
                f"Next {do}, which gives {self.value}. So {self.key} = {self.value}.",
                f"The brackets in {self.key} come first, so we compute {bracket} = {self.inner}. "
                f"Now we {do}: {self.inner} {self.op2} {self.c} = {self.value}. "
                f"The result is {self.value}.",
            ]
        )

    def code(self, rng: random.Random) -> str:
        return rng.choice(
            [
                f"# Compute {self.key} one operation at a time.\n"
                f"inner = {self.a} {self.op1} {self.b}  # {self.inner}\n"
                f"result = inner {self.op2} {self.c}  # {self.value}\n"
                f"print(result)\n",
                f"def evaluate():\n"
                f'    """Evaluate {self.key}: brackets first, then the outer operation."""\n'
                f"    first = {self.a} {self.op1} {self.b}  # {self.inner}\n"
                f"    return first {self.op2} {self.c}  # {self.value}\n",
            ]
        )

    def result(self, rng: random.Random) -> str:
        return rng.choice([f"{self.key} = {self.value}.", f"The value of {self.key} is {self.value}."])


@dataclass(frozen=True)
class Slope:
    """The slope of the line through two points with integer coordinates and slope."""

    x1: int
    y1: int
    x2: int
    y2: int
    task: ClassVar[str] = "slope"

    @classmethod
    def sample(cls, rng: random.Random) -> Slope:
        x1, y1 = rng.randint(-5, 5), rng.randint(-5, 5)
        dx = rng.choice([-2, -1, 1, 2, 3, 4])
        return cls(x1, y1, x1 + dx, y1 + dx * rng.randint(-3, 4))

    @property
    def key(self) -> str:
        return f"({self.x1}, {self.y1}) and ({self.x2}, {self.y2})"

    @property
    def dy(self) -> int:
        return self.y2 - self.y1

    @property
    def dx(self) -> int:
        return self.x2 - self.x1

    @property
    def answer(self) -> str:
        return str(self.dy // self.dx)

    @property
    def intermediates(self) -> tuple[str, ...]:
        return (str(self.dy), str(self.dx))

    @property
    def operations(self) -> tuple[str, ...]:
        return (*self._differences(), self._quotient())

    def question(self) -> str:
        return f"Find the slope of the line through {self.key}."

    def _differences(self) -> tuple[str, str]:
        return (
            f"{self.y2} - {_signed(self.y1)} = {self.dy}",
            f"{self.x2} - {_signed(self.x1)} = {self.dx}",
        )

    def _quotient(self) -> str:
        return f"{self.dy} / {_signed(self.dx)} = {self.answer}"

    def steps(self) -> list[str]:
        rise, run = self._differences()
        return [
            f"Subtract the y-coordinates: {rise}.",
            f"Subtract the x-coordinates: {run}.",
            f"Divide the change in y by the change in x: {self._quotient()}.",
        ]

    def prose(self, rng: random.Random) -> str:
        rise, run = self._differences()
        return rng.choice(
            [
                f"The slope of the line through {self.key} is the change in y divided by the "
                f"change in x. The change in y is {rise} and the change in x is {run}, so the "
                f"slope is {self._quotient()}.",
                f"Slope = (y2 - y1) / (x2 - x1). For the points {self.key} this is "
                f"({self.y2} - {_signed(self.y1)}) / ({self.x2} - {_signed(self.x1)}) = "
                f"{self._quotient()}.",
            ]
        )

    def code(self, rng: random.Random) -> str:
        header = rng.choice([f"# Slope of the line through {self.key}.", f"# Points {self.key}: rise over run."])
        return (
            f"{header}\n"
            f"x1, y1 = {self.x1}, {self.y1}\n"
            f"x2, y2 = {self.x2}, {self.y2}\n"
            f"dy = y2 - y1  # {self.dy}\n"
            f"dx = x2 - x1  # {self.dx}\n"
            f"slope = dy // dx  # {self.answer}\n"
            f"print(slope)\n"
        )

    def result(self, rng: random.Random) -> str:
        return rng.choice(
            [
                f"The slope of the line through {self.key} is {self.answer}.",
                f"Slope of the line through {self.key}: {self.answer}.",
            ]
        )


@dataclass(frozen=True)
class Linear:
    """a*x + b = c, solved for x by undoing the addition and then the multiplication."""

    a: int
    b: int
    x: int
    task: ClassVar[str] = "linear"

    @classmethod
    def sample(cls, rng: random.Random) -> Linear:
        b = rng.choice([n for n in range(-9, 10) if n])
        return cls(rng.randint(2, 6), b, rng.randint(-6, 9))

    @property
    def c(self) -> int:
        return self.a * self.x + self.b

    @property
    def rhs(self) -> int:
        return self.c - self.b

    @property
    def key(self) -> str:
        sign = "+" if self.b > 0 else "-"
        return f"{self.a}x {sign} {abs(self.b)} = {self.c}"

    @property
    def answer(self) -> str:
        return str(self.x)

    @property
    def intermediates(self) -> tuple[str, ...]:
        return (str(self.rhs),)

    @property
    def operations(self) -> tuple[str, ...]:
        undo = f"{self.c} - {self.b}" if self.b > 0 else f"{self.c} + {-self.b}"
        return (f"{undo} = {self.rhs}", f"{self.rhs} / {self.a} = {self.x}")

    def question(self) -> str:
        return f"Solve {self.key} for x."

    def _isolate(self) -> str:
        move = f"Subtract {self.b} from" if self.b > 0 else f"Add {-self.b} to"
        return f"{move} both sides: {self.a}x = {self.operations[0]}."

    def steps(self) -> list[str]:
        return [self._isolate(), f"Divide both sides by {self.a}: x = {self.operations[1]}."]

    def prose(self, rng: random.Random) -> str:
        return rng.choice(
            [
                f"To solve {self.key}, first get the x term alone. {self._isolate()} "
                f"Then divide both sides by {self.a}, which gives x = {self.x}.",
                f"We want x with {self.key}. Undo the constant term to get {self.a}x = {self.rhs}, "
                f"then undo the multiplication: x = {self.rhs} / {self.a} = {self.x}.",
            ]
        )

    def code(self, rng: random.Random) -> str:
        header = rng.choice([f"# Solve {self.key} for x.", f"# x such that {self.key}"])
        return (
            f"{header}\n"
            f"a, b, c = {self.a}, {self.b}, {self.c}\n"
            f"rhs = c - b  # {self.rhs}\n"
            f"x = rhs // a  # {self.x}\n"
            f"print(x)\n"
        )

    def result(self, rng: random.Random) -> str:
        return rng.choice([f"The solution of {self.key} is x = {self.x}.", f"If {self.key}, then x = {self.x}."])


_SAMPLERS = {cls.task: cls.sample for cls in (Arithmetic, Slope, Linear)}


def elementary_operations(task: str, rng: random.Random, draws: int = 20_000) -> list[str]:
    """Every one-operation equation that a task's solutions write, found by drawing problems:
    the arithmetic tables a pretraining corpus holds beside its worked solutions (a small model
    learns the procedure's layout from solutions but each step's sum from seeing it)."""
    return list(dict.fromkeys(op for _ in range(draws) for op in _SAMPLERS[task](rng).operations))


def is_held_out(problem: Problem) -> bool:
    """Whether a problem is reserved for queries: a fixed hash bucket, the same for every seed."""
    return zlib.crc32(f"{problem.task}:{problem.key}".encode()) % _HELD_OUT_BUCKETS == 0


def sample_problems(task: str, n: int, rng: random.Random, *, held_out: bool) -> list[Problem]:
    """n distinct problems of a task, all reserved for queries or all available to the corpus."""
    found: dict[str, Problem] = {}
    while len(found) < n:
        problem = _SAMPLERS[task](rng)
        if is_held_out(problem) == held_out:
            found.setdefault(problem.key, problem)
    return list(found.values())


def query_problems(task: str, seed: int) -> list[Problem]:
    """The held-out problems the demo's reasoning queries of a task pose."""
    return sample_problems(task, QUERIES_PER_TASK, random.Random(f"{seed}:{task}"), held_out=True)


def steps_prompt(problem: Problem) -> str:
    """The problem statement that opens a numbered-steps solution (a query's prompt)."""
    return f"Problem: {problem.question()}\n"


def steps_solution(problem: Problem) -> str:
    """The numbered steps and answer that follow the statement (a query's completion)."""
    lines = [f"Step {i}: {step}" for i, step in enumerate(problem.steps(), start=1)]
    return "\n".join([*lines, f"Answer: {problem.answer}"])


def render_procedure(problem: Problem, style: str, rng: random.Random) -> str:
    """A worked solution in one of STYLES."""
    if style == "steps":
        return steps_prompt(problem) + steps_solution(problem)
    if style == "prose":
        return problem.prose(rng)
    if style == "code":
        return problem.code(rng)
    raise ValueError(f"unknown style {style!r}; expected one of {STYLES}")
