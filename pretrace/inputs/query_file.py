"""The user's queries: reading the queries file (JSONL records {id, kind, prompt, completion,
answer}), the `Query` record, and its tokens (prompt and completion tokenized apart).

`completion` may be left out (or empty): the `completions` asset then has the model write it,
ending at its end-of-sequence token, at a string of the `completion_stop` setting, or at one of
the query's own `stop` strings (a factual question's answer ends at "." where a worked solution
runs over several sentences)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa

from pretrace.errors import InputError
from pretrace.inputs.corpus import check_unicode, jsonl_rows

REQUIRED = ("id", "kind", "prompt")
QUERY_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("kind", pa.string()),
        ("prompt", pa.string()),
        ("completion", pa.string()),
        ("answer", pa.string()),
        ("intermediates", pa.list_(pa.string())),
        ("stop", pa.list_(pa.string())),
        ("meta", pa.string()),
    ]
)


def read_queries(url: str) -> pa.Table:
    """Validated queries as a table; errors name the file, line and missing field."""
    columns: dict[str, list] = {name: [] for name in QUERY_SCHEMA.names}
    first_line: dict[str, int] = {}
    for number, raw in jsonl_rows(url):
        where = f"{url}, line {number}"
        if not isinstance(raw, dict):
            raise InputError(f"{where}: expected an object with {', '.join(REQUIRED)}")
        check_unicode(raw, where)
        missing = [f for f in REQUIRED if raw.get(f) is None or raw.get(f) == "" and f == "id"]
        if missing:
            raise InputError(
                f"{where}: the query lacks {', '.join(f'`{m}`' for m in missing)}; every query "
                f"needs {', '.join(REQUIRED)} (strings) and may give `completion` (else the model writes it), "
                "`answer` and `intermediates`"
            )
        wrong = [
            f"`{f}` is {type(raw[f]).__name__} {json.dumps(raw[f])[:40]}"
            for f in REQUIRED
            if not isinstance(raw[f], str)
        ]
        if wrong:
            raise InputError(f"{where}: {', '.join(wrong)}; {', '.join(REQUIRED)} must be strings (quote them)")
        if raw["id"] in first_line:
            raise InputError(f"{where}: duplicate query id {raw['id']!r}, already used on line {first_line[raw['id']]}")
        first_line[raw["id"]] = number
        completion = raw.get("completion")
        if completion is not None and not isinstance(completion, str):
            raise InputError(
                f"{where}: `completion` is {type(completion).__name__} {json.dumps(completion)[:40]}; give "
                "a string, or leave it out for the model to write it"
            )
        intermediates = _strings(raw, "intermediates", where)
        stop = _strings(raw, "stop", where)
        if not all(stop):
            raise InputError(f'{where}: `stop` must be a list of non-empty strings, e.g. ["."]')
        for field in REQUIRED:
            columns[field].append(raw[field])
        columns["completion"].append(completion if completion and completion.strip() else "")
        columns["answer"].append(_answer(raw.get("answer"), where))
        columns["intermediates"].append(intermediates)
        columns["stop"].append(stop)
        extra = {k: v for k, v in raw.items() if k not in QUERY_SCHEMA.names}
        columns["meta"].append(json.dumps(extra, ensure_ascii=False, default=str))
    if not first_line:
        raise InputError(f"{url}: the file has no queries; add one JSON object per line")
    return pa.table(columns, schema=QUERY_SCHEMA)


def _strings(raw: dict, field: str, where: str) -> list[str]:
    values = raw.get(field) or []
    if not isinstance(values, list) or not all(isinstance(x, str) for x in values):
        raise InputError(f"{where}: `{field}` must be a list of strings")
    return values


def _answer(value: object, where: str) -> str:
    """The answer as the user wrote it: a string as is, a number as its JSON text (0 stays "0");
    no answer is "". Anything else has no one text to search documents for."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return json.dumps(value)
    raise InputError(
        f"{where}: `answer` is {json.dumps(value)} ({type(value).__name__}); give the answer as a string "
        "or a number (the text to search the top documents for), or leave it out"
    )


def queries_from_table(table: pa.Table) -> list[Query]:
    """The queries of a table (the completion's tokens too, where the model wrote it)."""
    written = table.column("completion_ids").to_pylist() if "completion_ids" in table.column_names else None
    return [
        Query(
            row["id"],
            row["prompt"],
            row["completion"],
            row["kind"],
            row["answer"],
            None if written is None or written[i] is None else tuple(written[i]),
        )
        for i, row in enumerate(table.select(["id", "prompt", "completion", "kind", "answer"]).to_pylist())
    ]


@dataclass(frozen=True)
class Query:
    id: str
    prompt: str
    completion: str
    kind: str = ""
    answer: str = ""
    completion_ids: tuple[int, ...] | None = None  # the model's own tokens, when it wrote the completion


def encode_queries(
    queries: Sequence[Query], tokenizer, max_context: int | None = None
) -> tuple[list[list[int]], list[int]]:
    """Token ids of prompt+completion and the index where each completion starts."""
    encoded = [encode_query(query, tokenizer, max_context) for query in queries]
    return [ids for ids, _ in encoded], [start for _, start in encoded]


def encode_query(query: Query, tokenizer, max_context: int | None = None) -> tuple[list[int], int]:
    """One query's prompt+completion ids and where its completion starts.

    Prompt and completion are tokenized separately so the completion's tokens are exactly
    the ones scored, whatever the tokenizer would merge across the boundary. A completion the
    model wrote is its own tokens: decoding and tokenizing again need not give them back.
    """
    if query.completion_ids is not None:
        completion = list(query.completion_ids)
    elif query.completion and query.completion.strip():
        completion = tokenizer(query.completion, add_special_tokens=False)["input_ids"]
    else:
        completion = []
    if not completion:
        raise InputError(f"query {query.id!r}: the completion is empty; give the text whose probability to explain")
    prompt = tokenizer(query.prompt, add_special_tokens=True)["input_ids"]
    if not prompt:
        raise InputError(f"query {query.id!r}: the prompt is empty and the tokenizer adds no BOS token; give a prompt")
    ids = list(prompt) + list(completion)
    if max_context is not None and len(ids) > max_context:
        raise InputError(
            f"query {query.id!r}: prompt+completion is {len(ids)} tokens, longer than the model's "
            f"context of {max_context}; shorten the prompt or the completion"
        )
    return ids, len(prompt)
