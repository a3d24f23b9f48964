"""Ruis et al.'s answer search: the top documents of each query, flags per answer and step,
merged across shards exactly as a search of the whole corpus."""

import numpy as np
import pytest

from pretrace.analyses.answer_search import AnswerSearch, document_key
from pretrace.analyses.shard_statistics import ShardStatistics


def corpus(n=60, seed=0):
    rng = np.random.default_rng(seed)
    words = ["12", "4", "3", "Lima", "x", "y", "312", "12.5", "-4"]
    texts = [" ".join(rng.choice(words, 4)) for _ in range(n)]
    scores = rng.standard_normal((2, n)).astype(np.float32)
    scores[:, :5] = 0.5  # ties, broken by the document key
    return [f"d{i}" for i in range(n)], texts, scores


TARGETS = [["Lima"], ["12", "4", "3"]]


def test_flags_are_a_direct_search_of_each_query_top_documents():
    ids, texts, scores = corpus()
    search = AnswerSearch.of(scores, ids, texts, TARGETS, depth=10)
    by_key = {document_key(d): i for i, d in enumerate(ids)}
    for q, targets in enumerate(TARGETS):
        picked = [by_key[k] for k in search.keys[q]]
        assert sorted(scores[q, picked].tolist(), reverse=True) == sorted(scores[q].tolist(), reverse=True)[:10]
        assert search.scores[q].tolist() == scores[q, picked].tolist()  # best first
        for j, i in enumerate(picked):  # the demo's words are whole tokens: a plain token test is the truth
            assert search.found[q, j].tolist() == [t in texts[i].split() for t in targets] + [False] * (
                3 - len(targets)
            )
    # "12" is not found in "312" or "12.5", nor "4" in "-4"
    only = AnswerSearch.of(
        np.array([[3.0, 2.0, 1.0]], np.float32), ["a", "b", "c"], ["312 12.5", "-4", "12 4"], [["12", "4"]]
    )
    assert only.found[0].tolist() == [[False, False], [False, False], [True, True]]


def test_ties_are_broken_by_the_document_key_whatever_the_order():
    ids, texts = ["a", "b", "c", "d"], ["", "", "", ""]
    scores = np.array([[1.0, 1.0, 1.0, 1.0]], np.float32)
    first = AnswerSearch.of(scores, ids, texts, [[]], depth=2)
    flipped = AnswerSearch.of(scores[:, ::-1].copy(), ids[::-1], texts, [[]], depth=2)
    assert first.keys.tolist() == flipped.keys.tolist() == [sorted(document_key(d) for d in ids)[:2]]


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 0, 1), (1, 2, 0)])
def test_the_merge_of_shard_searches_is_the_search_of_the_whole_corpus(order):
    ids, texts, scores = corpus(90, seed=3)
    whole = ShardStatistics.of(["f", "r"], scores, texts=texts, targets=TARGETS, doc_ids=ids, search_depth=20)
    parts = [slice(0, 30), slice(30, 60), slice(60, 90)]
    shards = [
        ShardStatistics.of(["f", "r"], scores[:, p], texts=texts[p], targets=TARGETS, doc_ids=ids[p], search_depth=20)
        for p in parts
    ]
    merged = shards[order[0]].merge(shards[order[1]]).merge(shards[order[2]])
    for name in ("scores", "keys", "found"):
        np.testing.assert_array_equal(getattr(merged.search, name), getattr(whole.search, name))
    assert merged.search.found.shape == (2, 20, 3)
