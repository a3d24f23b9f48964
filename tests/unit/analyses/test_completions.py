"""The model's own completions: greedy generation against a brute-force decode, and the
correct/incorrect split on a tiny model trained to answer one template."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
import torch

from pretrace.analyses.completions import (
    GENERATED,
    GIVEN,
    GenerationSettings,
    answered,
    complete_queries,
    greedy_completions,
    through_stop,
)
from pretrace.errors import InputError
from pretrace.influence.capture import sequence_losses
from pretrace.inputs.batching import collate
from pretrace.inputs.query_file import Query, encode_query, queries_from_table, read_queries
from pretrace.model.adapter import wrap_model
from pretrace.testing.tiny import tiny_model, tiny_tokenizer

FACTS = {"France": "Paris", "Italy": "Rome", "Spain": "Madrid", "Peru": "Lima"}


@pytest.fixture(scope="module")
def lm():
    """A tiny Llama trained to finish "The capital of X is" with " Y." and end the sequence."""
    tok = tiny_tokenizer()
    documents = [tok(f"The capital of {c} is {a}.")["input_ids"] + [tok.eos_token_id] for c, a in FACTS.items()]
    model = tiny_model("llama", vocab_size=len(tok), seed=0).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    batch = collate(documents, pad_id=tok.pad_token_id)
    for _ in range(150):
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        loss = sequence_losses(logits, batch).sum() / batch.n_tokens
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return wrap_model(model.eval(), tok, device="cpu")


def brute_force_greedy(lm, prompt: str, max_new_tokens: int) -> list[int]:
    """Argmax of a full forward pass per step, no cache, no batching: the tokens before <eos>."""
    ids = lm.tokenizer(prompt)["input_ids"]
    new = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            token = int(lm.model(input_ids=torch.tensor([ids + new])).logits[0, -1].argmax())
            if token == lm.tokenizer.eos_token_id:
                break
            new.append(token)
    return new


def test_greedy_completions_equal_a_brute_force_decode(lm):
    prompts = [f"The capital of {c} is" for c in FACTS] + ["The capital of", "Rivers flow into the"]
    got = greedy_completions(lm, prompts, GenerationSettings(max_new_tokens=12), batch_size=2)
    assert got == [brute_force_greedy(lm, p, 12) for p in prompts]
    assert lm.tokenizer.batch_decode(got[:4]) == [f" {a}." for a in FACTS.values()]  # the template was learned


def test_a_stop_string_ends_the_answer_at_the_token_that_completes_it(lm):
    tok = lm.tokenizer
    ids = tok(" Lima. More\n\nand more", add_special_tokens=False)["input_ids"]
    for stop in ([". M"], ["\n\n", "zz"], ["and"]):
        kept = through_stop(ids, tok, stop)
        assert any(s in tok.decode(kept) for s in stop) and not any(s in tok.decode(kept[:-1]) for s in stop)
        assert kept == ids[: len(kept)]
    assert through_stop(ids, tok, ["zz"]) == ids and through_stop(ids, tok, []) == ids
    got = greedy_completions(lm, ["The capital of Peru is"], GenerationSettings(stop=("Li", "xyz")))
    assert tok.decode(got[0]).startswith(" Li") and len(got[0]) < len(
        brute_force_greedy(lm, "The capital of Peru is", 12)
    )


def _queries(tmp_path, records):
    path = tmp_path / "queries.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return read_queries(str(path))


def test_the_model_completes_queries_without_a_completion_and_each_is_marked_correct_or_not(lm, tmp_path):
    table = _queries(
        tmp_path,
        [
            {"id": "right", "kind": "factual", "prompt": "The capital of France is", "answer": "Paris"},
            {"id": "wrong", "kind": "factual", "prompt": "The capital of Italy is", "answer": "Paris"},
            {
                "id": "given",
                "kind": "factual",
                "prompt": "The capital of Spain is",
                "completion": " Lima.",
                "answer": "Madrid",
            },
            {
                "id": "given-wrong",
                "kind": "factual",
                "prompt": "The capital of Spain is",
                "completion": " Madrid.",
                "answer": "Lima",
            },
            {"id": "no-answer", "kind": "control", "prompt": "The capital of Peru is", "completion": ""},
        ],
    )
    done = {r["id"]: r for r in complete_queries(lm, table, GenerationSettings(max_new_tokens=8)).to_pylist()}
    assert done["right"] == {
        **done["right"],
        "source": GENERATED,
        "completion": " Paris.",
        "model_completion": " Paris.",
        "correct": True,
        "completion_ids": brute_force_greedy(lm, "The capital of France is", 8),
    }
    assert (done["wrong"]["completion"], done["wrong"]["correct"]) == (" Rome.", False)
    # A given completion is explained as given; whether the model answers correctly is its own greedy answer.
    assert [done["given"][k] for k in ("source", "completion", "completion_ids", "model_completion", "correct")] == [
        GIVEN,
        " Lima.",
        None,
        " Madrid.",
        True,
    ]
    assert done["given-wrong"]["correct"] is False
    assert (done["no-answer"]["source"], done["no-answer"]["completion"], done["no-answer"]["correct"]) == (
        GENERATED,
        " Lima.",
        None,
    )


def test_the_instruction_is_appended_only_where_the_model_writes_the_completion(lm, tmp_path):
    table = _queries(
        tmp_path,
        [
            {"id": "generated", "kind": "slope", "prompt": "The capital of France is"},
            {"id": "given", "kind": "slope", "prompt": "The capital of France is", "completion": " Paris."},
        ],
    )
    instruction = " The capital of Peru is"  # the tiny model writes something after it (not after " Think.")
    done = {r["id"]: r for r in complete_queries(lm, table, GenerationSettings(8, instruction=instruction)).to_pylist()}
    prompt = "The capital of France is The capital of Peru is"
    assert (done["generated"]["prompt"], done["generated"]["completion_ids"]) == (
        prompt,
        brute_force_greedy(lm, prompt, 8),
    )
    assert (done["given"]["prompt"], done["given"]["model_completion"]) == ("The capital of France is", " Paris.")


def test_an_empty_generated_completion_is_named_with_the_fix(lm, tmp_path):
    # the tiny model ends the sequence after a stated fact
    table = _queries(tmp_path, [{"id": "q7", "kind": "factual", "prompt": "The capital of France is Paris."}])
    with pytest.raises(
        InputError,
        match=r"query 'q7': the model's completion is empty or blank \(0 tokens\); give the "
        r"query a `completion`",
    ):
        complete_queries(lm, table, GenerationSettings())


def test_a_generated_completion_is_explained_as_the_tokens_the_model_wrote(lm):
    """Decoding and tokenizing again need not give the same tokens (a byte-level BPE can split
    merges differently): the tokens written are what query gradients and tail-patch measure."""
    tok = lm.tokenizer
    written = tok("Paris", add_special_tokens=False)["input_ids"][::-1] + [tok.convert_tokens_to_ids("Ġ")]
    query = Query("q", "The capital of France is", tok.decode(written), completion_ids=tuple(written))
    ids, start = encode_query(query, tok)
    assert ids[start:] == written and ids[:start] == tok("The capital of France is")["input_ids"]
    table = pa.table(
        {
            "id": ["q", "r"],
            "prompt": ["p", "p"],
            "completion": ["c", "d"],
            "kind": ["k", "k"],
            "answer": ["", ""],
            "completion_ids": pa.array([written, None], pa.list_(pa.int64())),
        }
    )
    assert [q.completion_ids for q in queries_from_table(table)] == [tuple(written), None]


def test_a_prompt_that_fills_the_context_is_named(lm, tmp_path):
    table = _queries(tmp_path, [{"id": "long", "kind": "factual", "prompt": " Paris" * 64}])
    with pytest.raises(InputError, match=r"query 'long': the prompt is \d+ tokens and fills the model's context of 64"):
        complete_queries(lm, table, GenerationSettings())


def test_the_queries_file_may_leave_the_completion_out_but_not_give_a_non_string(tmp_path):
    table = _queries(
        tmp_path, [{"id": "a", "kind": "f", "prompt": "p"}, {"id": "b", "kind": "f", "prompt": "p", "completion": "  "}]
    )
    assert table.column("completion").to_pylist() == ["", ""]
    with pytest.raises(InputError, match=r"line 1: `completion` is int 3; give a string, or leave it out"):
        _queries(tmp_path, [{"id": "a", "kind": "f", "prompt": "p", "completion": 3}])


def test_a_query_s_own_stop_strings_end_its_answer_and_only_its_own(lm, tmp_path):
    table = _queries(
        tmp_path,
        [
            {"id": "own", "kind": "f", "prompt": "The capital of Peru is", "answer": "Lima", "stop": ["Li"]},
            {"id": "none", "kind": "f", "prompt": "The capital of Peru is", "answer": "Lima"},
        ],
    )
    done = {r["id"]: r for r in complete_queries(lm, table, GenerationSettings(max_new_tokens=8)).to_pylist()}
    assert lm.tokenizer.decode(done["own"]["completion_ids"]).startswith(" Li")
    assert done["own"]["completion_ids"] == done["none"]["completion_ids"][: len(done["own"]["completion_ids"])]
    assert len(done["own"]["completion_ids"]) < len(done["none"]["completion_ids"])
    assert done["none"]["completion"] == " Lima."
    with pytest.raises(InputError, match=r"line 1: `stop` must be a list of non-empty strings"):
        _queries(tmp_path, [{"id": "a", "kind": "f", "prompt": "p", "stop": [""]}])
    with pytest.raises(InputError, match=r"line 1: `stop` must be a list of strings"):
        _queries(tmp_path, [{"id": "a", "kind": "f", "prompt": "p", "stop": "."}])


def test_correct_means_the_last_line_states_the_answer_not_a_step_that_equals_it():
    worked = "Step 1: 3 - 1 = 2.\nStep 2: 2 * 4 = 8.\nAnswer: 8\n"
    assert answered(worked, "8") is True
    assert answered(worked, "2") is False  # an intermediate result, not the answer given
    assert answered(" Paris.", "Paris") is True and answered("", "Paris") is False
    assert answered(worked, None) is None
