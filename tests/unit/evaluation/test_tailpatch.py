"""Tail-patch gains against a brute-force training step, and the baselines' rankings against
hand-computed ones."""

import copy
import math

import numpy as np
import pytest
import torch

from pretrace.evaluation.tailpatch import (
    BM25Index,
    completion_logprob,
    evaluate,
    summarize,
    tail_patch_gain,
    top_k_gradient,
    top_k_random,
)
from pretrace.influence.document_gradients import compute_document_gradients
from pretrace.model.adapter import wrap_model
from pretrace.testing.tiny import random_sequences, tiny_model


@pytest.fixture(scope="module")
def lm():
    return wrap_model(tiny_model("llama", seed=4), device="cpu")


QUERY = [1, 17, 42, 99, 7, 150, 23, 61]  # prompt: 4 tokens, completion: 4 tokens
START = 4


def test_the_gain_is_that_of_one_sgd_step_on_the_documents_mean_loss(lm):
    docs = random_sequences(3, min_len=12, max_len=12, seed=5)
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    gain = tail_patch_gain(lm, docs, QUERY, START, learning_rate=0.05)
    assert all(torch.equal(before[k], v) for k, v in lm.model.state_dict().items()), "the model was modified"
    # brute force: a copy of the model, HF's own loss over the documents, torch's SGD
    model = copy.deepcopy(lm.model).train(False)
    ids = torch.tensor(docs)
    loss = model(input_ids=ids, labels=ids).loss  # mean over every predicted token (equal lengths)
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.05).step()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([QUERY])).logits[0, :-1].log_softmax(-1)
    after = sum(float(logits[t - 1, QUERY[t]]) for t in range(START, len(QUERY)))
    assert gain == pytest.approx(after - completion_logprob(lm, QUERY, START), rel=1e-4, abs=1e-6)


def test_the_query_itself_tops_the_gain(lm):
    others = random_sequences(12, min_len=len(QUERY), max_len=len(QUERY), seed=6)
    gains = [tail_patch_gain(lm, [doc], QUERY, START, learning_rate=0.05) for doc in [QUERY, *others]]
    assert int(np.argmax(gains)) == 0 and gains[0] > 0


def test_cosine_ranks_by_unit_normalised_gradients(lm):
    docs = random_sequences(10, min_len=10, max_len=10, seed=7)
    stored = compute_document_gradients(lm, docs, [str(i) for i in range(10)]).grads
    query = compute_document_gradients(lm, [QUERY], ["q"], first_target=[START]).grads
    q = torch.cat([query[name][0].flatten() for name in sorted(query)]).double()
    cosine, dot = [], []
    for i in range(10):
        d = torch.cat([stored[name][i].flatten() for name in sorted(stored)]).double()
        cosine.append(float(q @ d / (q.norm() * d.norm())))
        dot.append(float(q @ d))
    single = {n: g[0] for n, g in query.items()}
    assert top_k_gradient(single, stored, 4) == sorted(range(10), key=lambda i: -cosine[i])[:4]
    assert top_k_gradient(single, stored, 4, normalise=False) == sorted(range(10), key=lambda i: -dot[i])[:4]
    # the raw query gradient is that of the completion's loss only
    full = compute_document_gradients(lm, [QUERY], ["q"]).grads
    assert not all(torch.allclose(full[n], query[n]) for n in query)


def test_bm25_scores_are_lucenes_formula():
    texts = ["the capital of France is Paris", "rivers flow into the sea", "Paris is a city in France and Paris is big"]
    words = [["capital", "france", "paris"], ["rivers", "flow", "sea"], ["paris", "city", "france", "paris", "big"]]
    average = sum(map(len, words)) / 3

    def lucene(query: list[str], doc: list[str]) -> float:
        total = 0.0
        for term in query:
            df = sum(term in w for w in words)
            tf = doc.count(term)
            idf = math.log(1 + (3 - df + 0.5) / (df + 0.5))
            total += idf * tf / (tf + 1.5 * (1 - 0.75 + 0.75 * len(doc) / average))
        return total

    index = BM25Index(texts)
    for query, terms in (("The capital of France?", ["capital", "france"]), ("Paris by the sea", ["paris", "sea"])):
        assert index.scores(query) == pytest.approx([lucene(terms, w) for w in words], rel=1e-5)
    brute = [lucene(["paris", "sea"], w) for w in words]
    assert index.top_k("Paris by the sea", 2) == sorted(range(3), key=lambda i: -brute[i])[:2] == [1, 2]


def test_random_baseline_is_seeded_and_distinct():
    first = top_k_random(100, 10, seed=3)
    assert first == top_k_random(100, 10, seed=3) != top_k_random(100, 10, seed=4)
    assert len(set(first)) == 10 and top_k_random(5, 10, seed=0) != [] and len(top_k_random(5, 10, seed=0)) == 5


def test_evaluate_and_summarize(lm):
    docs = [QUERY, *random_sequences(5, min_len=8, max_len=8, seed=8)]
    queries = [("q1", "factual", QUERY, START), ("q2", "math", QUERY, 6)]
    gains = evaluate(lm, queries, docs, {"influence": [[0], [0]], "random": [[3], [4]]}, learning_rate=0.05)
    assert gains.num_rows == 4 and gains.column("k").to_pylist() == [1, 1, 1, 1]
    summary = summarize(gains).to_pylist()
    influence_all = next(r for r in summary if r["method"] == "influence" and r["kind"] == "all")
    by_query = {(r["query_id"], r["method"]): r["gain"] for r in gains.to_pylist()}
    assert influence_all["mean_gain"] == pytest.approx((by_query["q1", "influence"] + by_query["q2", "influence"]) / 2)
    assert influence_all["beats_random"] == 1.0 and influence_all["queries"] == 2


def test_methods_choosing_the_same_documents_share_one_step(lm, monkeypatch):
    import pretrace.evaluation.tailpatch as tailpatch

    docs = [QUERY, *random_sequences(4, min_len=8, max_len=8, seed=9)]
    steps = []
    real = tailpatch.stepped_logprob

    def counted(lm, documents, *args):
        steps.append(len(documents))
        return real(lm, documents, *args)

    monkeypatch.setattr(tailpatch, "stepped_logprob", counted)
    rankings = {"influence": [[1, 2]], "influence_unit": [[2, 1]], "influence_relatif": [[1, 3]]}
    gains = {r["method"]: r["gain"] for r in evaluate(lm, [("q", "f", QUERY, START)], docs, rankings, 0.05).to_pylist()}
    assert len(steps) == 2  # {1, 2} once (in either order), {1, 3} once
    assert gains["influence_unit"] == gains["influence"] != gains["influence_relatif"]
    assert gains["influence_relatif"] == pytest.approx(tail_patch_gain(lm, [docs[1], docs[3]], QUERY, START, 0.05))
