"""Query gradients: completion-only measurement, preconditioning, projection and rank."""

import json

import pytest
import torch

from pretrace.errors import InputError
from pretrace.influence.ekfac import Factors, fit_factors
from pretrace.influence.projection import KroneckerProjection
from pretrace.influence.query_gradients import compute_query_gradients
from pretrace.inputs.batching import batches
from pretrace.inputs.query_file import Query, encode_queries, read_queries
from pretrace.model.adapter import wrap_model
from pretrace.testing.tiny import random_sequences, tiny_model, tiny_tokenizer

QUERIES = [
    Query("capital", "The capital of France is", " Paris."),
    Query("slope", "The slope between (1, 2) and (3, 8) is", " (8 - 2) / (3 - 1) = 3."),
    Query("code", "def add(a, b):", "\n    return a + b\n"),
]


def identity_factors(lm):
    """H = I: the 'preconditioned' gradient is the raw gradient."""

    def eye(d):
        return torch.eye(d)

    layers = lm.layers
    return Factors(
        {layer.name: eye(layer.d_in) for layer in layers},
        {layer.name: eye(layer.d_out) for layer in layers},
        {layer.name: torch.ones(layer.d_out, layer.d_in) for layer in layers},
        {layer.name: 0.0 for layer in layers},
    )


@pytest.fixture(scope="module")
def lm():
    return wrap_model(tiny_model("llama"), tiny_tokenizer(), device="cpu")


def autograd_query_gradient(lm, prompt_ids, completion_ids, completion_only=True):
    lm.model.zero_grad()
    ids = torch.tensor([prompt_ids + completion_ids])
    logits = lm.model(input_ids=ids).logits[0, :-1]
    logp = torch.log_softmax(logits, -1).gather(1, ids[0, 1:, None])[:, 0]
    first = len(prompt_ids) - 1 if completion_only else 0
    measured = logp[first:].sum()
    (-measured).backward()
    return {layer.name: layer.weight_gradient().clone() for layer in lm.layers}, measured.item()


def test_gradient_is_that_of_the_completion_only(lm):
    qg = compute_query_gradients(lm, identity_factors(lm), QUERIES, batch_size=2)
    tok = lm.tokenizer
    for i, q in enumerate(QUERIES):
        prompt, completion = tok(q.prompt)["input_ids"], tok(q.completion, add_special_tokens=False)["input_ids"]
        expected, logprob = autograd_query_gradient(lm, prompt, completion)
        whole_sequence, _ = autograd_query_gradient(lm, prompt, completion, completion_only=False)
        assert qg.logprobs[i].item() == pytest.approx(logprob, rel=1e-5)
        for name in qg.layers:
            torch.testing.assert_close(qg.dense(name)[i], expected[name], rtol=1e-4, atol=1e-7)
            # Had prompt tokens counted, the gradient would differ markedly.
            assert (whole_sequence[name] - expected[name]).norm() > 0.1 * expected[name].norm()


def test_prompt_tokens_are_not_targets(lm):
    sequences, starts = encode_queries(QUERIES, lm.tokenizer)
    for seq, start, q in zip(sequences, starts, QUERIES):
        assert seq[start:] == lm.tokenizer(q.completion, add_special_tokens=False)["input_ids"]
        assert seq[0] == lm.tokenizer.bos_token_id


def test_preconditioning_applies_the_inverse_hvp(lm):
    def data():
        return (b for _, b in batches(random_sequences(12), 4, 0))

    factors = fit_factors(lm, data)
    raw = compute_query_gradients(lm, identity_factors(lm), QUERIES)
    pre = compute_query_gradients(lm, factors, QUERIES)
    for name in pre.layers:
        torch.testing.assert_close(pre.dense(name), factors.inverse_hvp(name, raw.dense(name)), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(pre.logprobs, raw.logprobs)


def test_projection_and_rank(lm):
    factors = identity_factors(lm)
    proj = KroneckerProjection.build(lm.layer_shapes(), 8, 8, seed=4)
    dense = compute_query_gradients(lm, factors, QUERIES)
    projected = compute_query_gradients(lm, factors, QUERIES, projection=proj)
    low = compute_query_gradients(lm, factors, QUERIES, projection=proj, rank=2)
    for name in dense.layers:
        torch.testing.assert_close(
            projected.dense(name), proj.project_matrix(name, dense.dense(name)), rtol=1e-4, atol=1e-6
        )
        assert low.left[name].shape == (3, 8, 2) and low.right[name].shape == (3, 8, 2)
        U, S, Vh = torch.linalg.svd(projected.dense(name))
        best_rank_2 = U[..., :2] @ torch.diag_embed(S[..., :2]) @ Vh[..., :2, :]
        torch.testing.assert_close(low.dense(name), best_rank_2, rtol=1e-4, atol=1e-6)


def test_round_trip(lm):
    qg = compute_query_gradients(lm, identity_factors(lm), QUERIES, rank=3)
    back = type(qg).from_tensors(*qg.to_tensors())
    assert back.ids == qg.ids and back.rank == 3
    for name in qg.layers:
        torch.testing.assert_close(back.dense(name), qg.dense(name))


def test_empty_completion_is_named(lm):
    with pytest.raises(InputError, match=r"query 'blank': the completion is empty"):
        compute_query_gradients(lm, identity_factors(lm), [Query("blank", "Hello", "  ")])


def test_too_long_query_is_named(lm):
    long = Query("long", "word " * 80, " end")
    with pytest.raises(
        InputError, match=r"query 'long': prompt\+completion is \d+ tokens, longer than the model's context of 64"
    ):
        compute_query_gradients(lm, identity_factors(lm), [long])


def test_bad_rank(lm):
    with pytest.raises(InputError, match="query_rank"):
        compute_query_gradients(lm, identity_factors(lm), QUERIES, rank=0)


@pytest.mark.parametrize("answer, stored", [(0, "0"), (29029, "29029"), (2.5, "2.5"), ("Paris", "Paris"), (None, "")])
def test_answers_are_kept_as_written(tmp_path, answer, stored):
    path = tmp_path / "q.jsonl"
    record = {"id": "q", "kind": "k", "prompt": "p", "completion": "c"} | ({} if answer is None else {"answer": answer})
    path.write_text(json.dumps(record) + "\n")
    assert read_queries(str(path)).column("answer").to_pylist() == [stored]


@pytest.mark.parametrize("answer", [False, ["x"], {"a": 1}])
def test_answers_without_one_text_are_refused(tmp_path, answer):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"id": "q", "kind": "k", "prompt": "p", "completion": "c", "answer": answer}) + "\n")
    with pytest.raises(InputError, match=r"q\.jsonl, line 1: `answer` is .* give the answer as a string or a number"):
        read_queries(str(path))


def test_a_missing_queries_file_is_named_with_the_fix(tmp_path):
    missing = tmp_path / "queries.jsonl"
    with pytest.raises(InputError, match=rf"^{missing}: no such file; correct the path in pretrace.yaml"):
        read_queries(str(missing))
