"""The demo's data and model: the properties the influence analysis relies on."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pretrace.demo import facts, procedures
from pretrace.demo.corpus import build_demo_corpus
from pretrace.demo.files import write_records
from pretrace.demo.queries import KINDS, build_demo_queries, per_kind
from pretrace.demo.tokenizer import train_tokenizer
from pretrace.demo.train import train_demo_model
from pretrace.errors import InputError
from pretrace.inputs.corpus import read_records

SOURCES = {"code", "prose", "facts", "math_procedure", "math_result", "math_table", "planted", "planted_reasoning"}
PLANTED_KINDS = {"planted", "planted_reasoning"}
# The problem's numbers as every rendering writes them, found in a reasoning query's prompt.
KEY_PATTERNS = {
    "arithmetic": r"\(\d+ [-+*] \d+\) [-+*] \d+",
    "slope": r"\(-?\d+, -?\d+\) and \(-?\d+, -?\d+\)",
    "linear": r"\d+x [-+] \d+ = -?\d+",
}


@pytest.fixture(scope="module")
def corpus_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return build_demo_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def records(corpus_files: list[Path]) -> list[dict]:
    return [r for f in corpus_files for r in read_records(str(f))]


@pytest.fixture(scope="module")
def queries(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    path = build_demo_queries(tmp_path_factory.mktemp("queries") / "queries.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_corpus_has_every_format_and_source_with_unique_ids(corpus_files, records):
    suffixes = {"".join(f.suffixes) for f in corpus_files}
    assert {".jsonl", ".jsonl.gz", ".parquet"} <= suffixes
    assert 5 <= len(corpus_files) <= 6
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids))
    assert {r["source"] for r in records} == SOURCES
    by_file = [sum(1 for _ in read_records(str(f))) for f in corpus_files]
    assert min(by_file) > 0.8 * max(by_file), "shards should be of similar size"


def test_corpus_is_small_enough_for_the_cpu_demo(records):
    assert 2000 <= len(records) <= 3000
    assert all(r["text"].strip() for r in records)
    assert sum(len(r["text"]) <= 1000 for r in records) >= 0.95 * len(records)


def test_corpus_is_deterministic_for_a_seed(corpus_files, tmp_path):
    again = build_demo_corpus(tmp_path / "again", seed=0)
    assert [f.read_bytes() for f in again] == [f.read_bytes() for f in corpus_files]
    other = build_demo_corpus(tmp_path / "other", seed=1)
    assert [f.read_bytes() for f in other] != [f.read_bytes() for f in corpus_files]


def test_procedures_compute_the_right_answers():
    rng = random.Random(0)
    for p in procedures.sample_problems("arithmetic", 50, rng, held_out=False):
        assert str(eval(p.key)) == p.answer  # the key is digits, brackets and + - * only
    for p in procedures.sample_problems("slope", 50, rng, held_out=False):
        assert (p.y2 - p.y1) == int(p.answer) * (p.x2 - p.x1)
    for p in procedures.sample_problems("linear", 50, rng, held_out=True):
        assert p.a * int(p.answer) + p.b == p.c
        assert procedures.is_held_out(p)


def test_queries_have_every_kind_and_a_consistent_schema(queries):
    assert [q["kind"] for q in queries if q["kind"] not in PLANTED_KINDS] == [
        k for k in KINDS for _ in range(per_kind(k))
    ]
    assert len({q["id"] for q in queries}) == len(queries)
    for q in queries:
        # The model writes the completion it is explained by, except for the planted ground truths.
        assert ("completion" in q) == (q["kind"] in PLANTED_KINDS)
        worked = q["completion"] if q["kind"] in PLANTED_KINDS else q["reference"]
        assert q["answer"] and q["answer"] in worked
        if q["kind"] in (*procedures.TASKS, "planted_reasoning"):
            assert worked.endswith(f"Answer: {q['answer']}") and q["stop"] == []
            assert q["intermediates"] and all(i in worked for i in q["intermediates"])
        else:
            assert q["intermediates"] == []


def test_planted_facts_are_deterministic_and_stated_as_often_as_their_queries_say(queries, records, tmp_path):
    from pretrace.demo.planted import FREQUENCIES, planted_documents, planted_facts

    assert planted_documents(0) == planted_documents(0) != planted_documents(1)
    planted = [q for q in queries if q["kind"] == "planted"]
    stating = {}
    for r in records:
        if r["source"] == "planted":
            stating.setdefault(r["evidence"], []).append(r)
    assert len(planted) == len(stating) == 36
    for q in planted:
        docs = stating[q["evidence"]]
        assert len(docs) == q["planted_frequency"] in FREQUENCIES
        assert len({d["text"] for d in docs}) == len(docs), "paraphrases, not copies"
        name = {f.key: f.name for f in planted_facts(0)}[q["evidence"]]
        assert name in q["prompt"] and all(q["answer"] in d["text"] and name in d["text"] for d in docs), q
        assert not any(q["prompt"] in d["text"] for d in docs), "the question's wording is not in the corpus"
    assert sorted({q["planted_frequency"] for q in planted}) == list(FREQUENCIES)
    assert [sum(q["planted_frequency"] == f for q in planted) for f in FREQUENCIES] == [12, 12, 12]


def test_planted_solutions_are_stated_as_often_as_their_queries_say_and_no_reasoning_query_is_planted(queries, records):
    from pretrace.demo.planted import FREQUENCIES
    from pretrace.demo.planted_reasoning import planted_problems

    planted = [q for q in queries if q["kind"] == "planted_reasoning"]
    docs = [r for r in records if r["source"] == "planted_reasoning"]
    assert len(planted) == 6 * len(procedures.TASKS)
    asked = {re.search(KEY_PATTERNS[q["kind"]], q["prompt"]).group(0) for q in queries if q["kind"] in procedures.TASKS}
    for q in planted:
        stating = [d for d in docs if d["evidence"] == q["evidence"]]
        assert len(stating) == q["planted_frequency"] in FREQUENCIES
        assert len({d["text"] for d in stating}) == len(stating), "each copy its own document"
        assert all(d["problem"] in q["prompt"] and d["problem"] not in asked for d in stating)
        for d in stating:  # every rendering states the answer and each step result
            assert all(
                re.search(rf"(?<![\d-]){re.escape(x)}(?!\d)", d["text"]) for x in [q["answer"], *q["intermediates"]]
            )
    assert sum(q["planted_frequency"] for q in planted) == len(docs)
    assert all(procedures.is_held_out(p) for _, p, _ in planted_problems(0)), "no other document works them"


def test_reasoning_queries_are_not_worked_in_the_corpus(queries, records):
    solved = [r for r in records if r["source"] in ("math_procedure", "math_result")]
    worked = {r["problem"] for r in solved}
    assert len(worked) == len(solved)
    texts = [r["text"] for r in records]
    for q in queries:
        if q["kind"] not in procedures.TASKS:
            continue
        key = _key(q)
        assert key not in worked
        exact = re.compile(rf"(?<![\d-]){re.escape(key)}(?!\d)")
        assert not any(exact.search(t) for t in texts), f"{key} occurs in the corpus"


def test_every_step_of_a_reasoning_query_is_in_the_arithmetic_tables(queries, records):
    """The model can have seen each one-operation sum a query's solution writes, never the problem."""
    tables = [line for r in records if r["source"] == "math_table" for line in r["text"].splitlines()]
    assert len(tables) == len(set(tables))
    by_key = {p.key: p for task in procedures.TASKS for p in procedures.query_problems(task, seed=0)}
    steps = [op for q in queries if q["kind"] in procedures.TASKS for op in by_key[_key(q)].operations]
    assert len(steps) >= 2 * procedures.QUERIES_PER_TASK * len(procedures.TASKS)
    assert set(steps) <= set(tables)


def _key(query: dict) -> str:
    return re.search(KEY_PATTERNS[query["kind"]], query["prompt"]).group(0)


def test_factual_queries_are_stated_in_several_phrasings(queries, records):
    fact_docs = [r for r in records if r["source"] == "facts"]
    names = sorted((c.name for c in facts.countries()), key=len, reverse=True)
    for q in (q for q in queries if q["kind"] == "factual"):
        sentence = q["prompt"] + q["reference"]
        assert any(r["text"] == sentence for r in fact_docs), f"{sentence} not a document of its own"
        assert sum(sentence in r["text"] for r in fact_docs) >= 2, sentence
        country = next(n for n in names if n in q["prompt"])
        styles = {r["style"] for r in fact_docs if country in r["text"] and q["answer"] in r["text"]}
        assert len(styles) >= 3, (sentence, styles)


def test_tokenizer_round_trips_through_save_pretrained(tmp_path):
    texts = ["The capital of France is Paris.", "def f(x):\n    return x + 1\n"] * 20
    tokenizer = train_tokenizer(texts, vocab_size=300)
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "The capital of Spain is Madrid. ünïcode"
    ids = loaded(text)["input_ids"]
    assert ids == tokenizer(text)["input_ids"]
    assert ids[0] == loaded.bos_token_id and loaded.bos_token_id not in ids[1:]
    assert loaded(text, add_special_tokens=False)["input_ids"] == ids[1:]
    assert loaded.decode(ids, skip_special_tokens=True) == text
    assert (loaded.pad_token, loaded.bos_token, loaded.eos_token) == ("<pad>", "<bos>", "<eos>")
    assert len(loaded) <= 300


def test_tiny_training_run_saves_a_loadable_model_that_learned(corpus_files, tmp_path):
    calls = []
    shard = next(f for f in corpus_files if f.name.endswith(".parquet"))
    out = tmp_path / "model"
    summary = train_demo_model(
        [shard],
        out,
        max_length=32,
        steps=20,
        batch_size=8,
        progress=lambda step, total: calls.append((step, total)),
    )
    assert json.loads((out / "training.json").read_text()) == summary
    assert summary["steps"] == 20 and calls[-1] == (20, 20)
    assert summary["final_loss"] < summary["initial_loss"] - 0.5
    assert not list(tmp_path.glob(".model*")), "the temporary checkpoint was left behind"
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.max_position_embeddings == 32 and not model.config.tie_word_embeddings
    batch = tokenizer(["The capital of France is"], return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape[-1] == len(tokenizer) and torch.isfinite(logits).all()


def test_training_refuses_a_corpus_smaller_than_one_batch(tmp_path):
    record = {"id": "a", "text": "too short", "source": "x"}
    shard = write_records(tmp_path / "tiny.jsonl", [record])
    with pytest.raises(InputError, match="fewer than"):
        train_demo_model([shard], tmp_path / "model", steps=1)
    assert not (tmp_path / "model").exists()
