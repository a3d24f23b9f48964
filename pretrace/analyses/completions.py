"""The model's own completions: greedy generation, and whether the model answers each query.

Ruis et al. explain the model's own zero-shot (chain-of-thought) completions and read the
queries it answers correctly apart from those it does not. So a query may leave out its
completion and the model writes one, greedily, from the prompt followed by an optional
instruction ("Let's think step by step."). Every query is also answered once greedily from
the prompt it is explained with, so each one says whether the *model* answers it: `correct`
is true when the last non-empty line of that greedy answer contains the query's answer by the
matching rules of `pretrace.analyses.answers` (null when the query gives no answer). For a query with a given
completion the explained completion stays the user's; only `correct` comes from the model.
A generated completion is explained as the tokens the model wrote (`completion_ids`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pyarrow as pa
import torch

from pretrace.analyses.answers import find_answer
from pretrace.config import PretraceConfig
from pretrace.errors import InputError
from pretrace.inputs.query_file import QUERY_SCHEMA
from pretrace.model.adapter import LoadedModel

GIVEN, GENERATED = "given", "generated"
COMPLETION_SCHEMA = pa.schema(
    list(QUERY_SCHEMA)
    + [
        pa.field("source", pa.string()),  # given | generated: whose completion is explained
        pa.field("completion_ids", pa.list_(pa.int64())),  # a generated completion's tokens, explained as written
        pa.field("model_completion", pa.string()),  # the model's greedy answer to the explained prompt
        pa.field("correct", pa.bool_()),  # that answer contains `answer`; null without an answer
    ]
)


@dataclass(frozen=True)
class GenerationSettings:
    """How the model answers: at most ``max_new_tokens``, ending at its end-of-sequence token or
    at the token that completes one of ``stop`` (kept); ``instruction`` is appended to the
    prompts it completes."""

    max_new_tokens: int = 128
    instruction: str | None = None
    stop: tuple[str, ...] = ()


def generation_settings(config: PretraceConfig) -> GenerationSettings:
    """The settings of a PretraceConfig that decide how the model answers."""
    return GenerationSettings(config.completion_tokens, config.completion_instruction, tuple(config.completion_stop))


def room_to_answer(name: str, prompt_tokens: int, max_new_tokens: int, context: int | None) -> int:
    """How many tokens the model may write after a prompt of this length; none left is an error."""
    room = max_new_tokens if context is None else min(max_new_tokens, context - prompt_tokens)
    if room < 1:
        raise InputError(
            f"query {name!r}: the prompt is {prompt_tokens} tokens and fills the model's context of {context}; "
            "shorten the prompt (or `completion_instruction`) to leave room for an answer"
        )
    return room


def greedy_completions(
    lm: LoadedModel,
    prompts: Sequence[str],
    settings: GenerationSettings,
    *,
    batch_size: int = 8,
    names: Sequence[str] | None = None,
    stops: Sequence[Sequence[str]] | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[list[int]]:
    """The tokens of the model's greedy continuation of each prompt (end-of-sequence left out),
    ended by a string of ``settings.stop`` or of the prompt's own ``stops``.

    Prompts are batched only with prompts of the same token length, so no padding enters a
    forward pass and each completion is what the prompt alone would give.
    """
    names = list(names) if names is not None else [str(i) for i in range(len(prompts))]
    own = [tuple(s) for s in stops] if stops is not None else [() for _ in prompts]
    encoded = [lm.tokenizer(p, add_special_tokens=True)["input_ids"] for p in prompts]
    by_length: dict[int, list[int]] = defaultdict(list)
    for i, ids in enumerate(encoded):
        by_length[len(ids)].append(i)
    out: list[list[int]] = [[] for _ in prompts]
    for length, members in sorted(by_length.items()):
        room = room_to_answer(names[members[0]], length, settings.max_new_tokens, lm.max_context)
        for start in range(0, len(members), batch_size):
            chunk = members[start : start + batch_size]
            chunk_stops = [(*settings.stop, *own[i]) for i in chunk]
            for i, ids in zip(chunk, _generate(lm, [encoded[i] for i in chunk], room, chunk_stops)):
                out[i] = ids
            if progress is not None:
                progress(len(chunk))
    return out


def _generate(
    lm: LoadedModel, prompts: list[list[int]], max_new_tokens: int, stops: list[tuple[str, ...]]
) -> list[list[int]]:
    """Greedy continuations of same-length prompts, each ended by its own stop strings."""
    from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

    tokenizer, length = lm.tokenizer, len(prompts[0])

    class StopStrings(StoppingCriteria):
        """Ends a sequence once its text holds one of its stop strings (it is cut there afterwards)."""

        def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
            texts = tokenizer.batch_decode(input_ids[:, length:], skip_special_tokens=True)
            return torch.tensor([any(s in t for s in stop) for t, stop in zip(texts, stops)], device=input_ids.device)

    eos = getattr(tokenizer, "eos_token_id", None)
    config = GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=max_new_tokens,
        eos_token_id=eos,
        pad_token_id=lm.pad_token_id if eos is None else eos,
    )
    ids = torch.tensor(prompts, device=lm.device)
    with torch.no_grad(), lm.autocast():
        generated = lm.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            generation_config=config,
            stopping_criteria=StoppingCriteriaList([StopStrings()]) if any(stops) else None,
        )
    out = []
    for row, stop in zip(generated[:, length:].tolist(), stops):
        row = row[: row.index(eos)] if eos in row else row
        out.append(through_stop(row, tokenizer, stop))
    return out


def through_stop(ids: list[int], tokenizer, stop: Sequence[str]) -> list[int]:
    """The tokens up to and including the one that completes the first stop string (all of them
    when none occurs). The completion ends on a token boundary, so the tokens explained are
    exactly tokens the model wrote."""

    def holds_stop(n: int) -> bool:
        text = tokenizer.decode(ids[:n], skip_special_tokens=True)
        return any(s in text for s in stop)

    if not stop or not holds_stop(len(ids)):
        return ids
    low, high = 1, len(ids)  # the shortest prefix that holds a stop string, by bisection
    while low < high:
        middle = (low + high) // 2
        low, high = (low, middle) if holds_stop(middle) else (middle + 1, high)
    return ids[:low]


def answered(completion: str, answer: str | None) -> bool | None:
    """Whether a completion's last non-empty line states the answer (a worked solution ends with
    its answer; an intermediate result that happens to equal it does not count); None when there
    is no answer to look for."""
    if not answer:
        return None
    lines = [line for line in completion.splitlines() if line.strip()]
    return bool(lines) and find_answer(lines[-1], answer) is not None


def complete_queries(
    lm: LoadedModel,
    queries: pa.Table,
    settings: GenerationSettings,
    *,
    batch_size: int = 8,
    progress: Callable[[int], None] | None = None,
) -> pa.Table:
    """The queries as they are explained (COMPLETION_SCHEMA): the model completes those without a
    completion, and answers every one greedily from its explained prompt."""
    rows = queries.to_pylist()
    for row in rows:
        if row["completion"]:
            row["source"] = GIVEN
        else:
            row["source"] = GENERATED
            row["prompt"] = row["prompt"] + (settings.instruction or "")
    answers = greedy_completions(
        lm,
        [r["prompt"] for r in rows],
        settings,
        batch_size=batch_size,
        names=[r["id"] for r in rows],
        stops=[r.get("stop") or () for r in rows],
        progress=progress,
    )
    for row, ids in zip(rows, answers):
        text = lm.tokenizer.decode(ids, skip_special_tokens=True)
        row["model_completion"] = text
        if row["source"] == GENERATED:
            if not text.strip():
                raise InputError(
                    f"query {row['id']!r}: the model's completion is empty or blank ({len(ids)} tokens); give the "
                    "query a `completion`, or change `completion_instruction` / `completion_stop`"
                )
            row["completion"], row["completion_ids"] = text, ids
        row["correct"] = answered(text, row["answer"])
    return pa.Table.from_pylist(rows, schema=COMPLETION_SCHEMA)


def with_model_answers(queries: pa.Table, completions: pa.Table) -> pa.Table:
    """The scored queries (in their order) with whose completion each is, the model's greedy answer
    and whether it is correct, from the `completions` table."""
    answers = {r["id"]: r for r in completions.select(["id", "source", "model_completion", "correct"]).to_pylist()}
    missing = [q for q in queries.column("id").to_pylist() if q not in answers]
    if missing:
        raise InputError(f"queries {missing[:5]} have no completion record; recompute `completions`")
    rows = [answers[q] for q in queries.column("id").to_pylist()]
    for name in ("source", "model_completion", "correct"):
        queries = queries.append_column(
            completions.schema.field(name), pa.array([r[name] for r in rows], completions.schema.field(name).type)
        )
    return queries
