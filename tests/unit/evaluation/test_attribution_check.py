"""The attribution check's rankings over several shards equal those over one list of documents."""

import pyarrow as pa
import pytest
import torch

from pretrace.analyses.top_documents import merge_top_documents, top_documents
from pretrace.evaluation.attribution_check import (
    Documents,
    attribution_check,
    evidence_documents,
    evidence_retrieval,
    gradient_rankings,
    influence_ranking,
    summarize_retrieval,
)
from pretrace.evaluation.tailpatch import top_k_gradient
from pretrace.influence.document_gradients import compute_document_gradients
from pretrace.influence.ekfac import Factors
from pretrace.influence.query_gradients import compute_query_gradients
from pretrace.inputs.query_file import Query
from pretrace.model.adapter import wrap_model
from pretrace.testing.tiny import SENTENCES, tiny_model, tiny_tokenizer

QUERIES = [
    Query("capital", "The capital of France is", " Paris.", "factual"),
    Query("slope", "The slope between (1, 2) and (3, 8) is", " 3.", "math"),
]


@pytest.fixture(scope="module")
def setup():
    tokenizer = tiny_tokenizer()
    lm = wrap_model(tiny_model("llama", seed=5), tokenizer, device="cpu")
    # distinct texts: equal documents would tie, and which of two ties wins then depends on float rounding
    texts = [f"{SENTENCES[i % len(SENTENCES)]} {SENTENCES[(3 * i + 1) % len(SENTENCES)]} ({i})" for i in range(12)]
    shards = []
    for shard, part in (("a.jsonl", texts[:7]), ("b.parquet", texts[7:])):
        ids = [f"d{i}" for i in range(len(part))]  # the same ids in both files
        tokens = [tokenizer(t)["input_ids"] for t in part]
        table = pa.table({"doc_id": ids, "input_ids": tokens, "text": part})
        if shard == "a.jsonl":  # one shard names sources, the other does not ("unknown")
            table = table.append_column("source", pa.array(["web" if i % 2 else "math" for i in range(len(part))]))
        shards.append((shard, table))
    return lm, Documents.from_shards(shards), shards


def _gradients(lm, shards):
    for shard, table in shards:
        yield (
            shard,
            compute_document_gradients(lm, table.column("input_ids").to_pylist(), table.column("doc_id").to_pylist()),
        )


def test_gradient_rankings_over_shards_equal_those_over_all_documents(setup):
    lm, documents, shards = setup
    ranked = gradient_rankings(lm, QUERIES, _gradients(lm, shards), documents, 4, None, batch_size=4)
    everything = compute_document_gradients(lm, documents.tokens, [str(i) for i in range(len(documents.tokens))])
    for q, query in enumerate(QUERIES):
        sequence = lm.tokenizer(query.prompt)["input_ids"]
        completion = lm.tokenizer(query.completion, add_special_tokens=False)["input_ids"]
        raw = compute_document_gradients(lm, [sequence + completion], ["q"], first_target=[len(sequence)]).grads
        single = {n: g[0] for n, g in raw.items()}
        assert ranked["cosine"][q] == top_k_gradient(single, everything.grads, 4)
        assert ranked["identity"][q] == top_k_gradient(single, everything.grads, 4, normalise=False)


def test_influence_ranking_follows_the_merged_top_lists_by_shard_and_id(setup):
    lm, documents, shards = setup
    tops = [
        top_documents(
            [q.id for q in QUERIES],
            table.column("doc_id").to_pylist(),
            [[float(len(t)) for t in table.column("text").to_pylist()]] * 2,
            3,
            shard=shard,
        )
        for shard, table in shards
    ]
    ranked = influence_ranking(merge_top_documents(tops, 3), QUERIES, documents, 3)
    lengths = [len(t) for t in documents.texts]
    brute = sorted(range(len(lengths)), key=lambda i: (-lengths[i], documents.keys[i][1], documents.keys[i][0]))[:3]
    assert ranked == [brute, brute]


def test_the_check_runs_every_method_for_every_query(setup):
    lm, documents, shards = setup
    # H = I (no damping): the stored query gradients are the raw ones, RelatIF divides by |g_d|
    factors = Factors(
        {layer.name: torch.eye(layer.d_in) for layer in lm.layers},
        {layer.name: torch.eye(layer.d_out) for layer in lm.layers},
        {layer.name: torch.ones(layer.d_out, layer.d_in) for layer in lm.layers},
        {layer.name: 0.0 for layer in lm.layers},
    )
    tops = [
        top_documents(
            [q.id for q in QUERIES], table.column("doc_id").to_pylist(), [[1.0] * table.num_rows] * 2, 3, shard=shard
        )
        for shard, table in shards
    ]
    check = attribution_check(
        lm,
        QUERIES,
        documents,
        merge_top_documents(tops, 3),
        _gradients(lm, shards),
        query_evidence=["fact", None],
        k=3,
        learning_rate=0.01,
        seed=0,
        projection=None,
        batch_size=4,
        preconditioned=compute_query_gradients(lm, factors, QUERIES),
        factors=factors,
    )
    gains = check.gains
    methods = ("influence", "random", "bm25", "cosine", "identity", "influence_unit", "influence_relatif")
    assert sorted(set(zip(gains.column("query_id").to_pylist(), gains.column("method").to_pylist()))) == sorted(
        (q.id, m) for q in QUERIES for m in methods
    )
    assert set(check.summary.column("kind").to_pylist()) == {"all", "factual", "math"}
    assert check.retrieval.num_rows == 0  # no document states "fact" here
    assert set(check.outputs()) == {
        "gains.parquet",
        "summary.parquet",
        "retrieval.parquet",
        "retrieval_summary.parquet",
        "rankings.parquet",
        "evidence.parquet",
    }
    rankings = check.rankings.to_pylist()
    assert len(rankings) == len(QUERIES) * len(methods) * 3  # every method's top 3 of every query
    source = dict(zip(documents.keys, documents.sources))
    assert all(r["source"] == source[(r["shard"], r["doc_id"])] for r in rankings)
    assert set(documents.sources) == {"web", "math", "unknown"}


def test_evidence_retrieval_counts_where_each_method_ranks_the_stating_documents():
    documents = Documents(
        [("s", str(i)) for i in range(6)], [[1, 2]] * 6, [""] * 6, [None, "f1", "f1", "f2", None, "f1"]
    )
    rankings = {"influence": [[2, 0, 5], [4, 0, 1], [0, 1, 2]], "bm25": [[0, 4, 3], [3, 2, 1], [0, 1, 2]]}
    table = evidence_retrieval(["f1", "f2", None], ["a", "b", "c"], documents, rankings, ["planted"] * 3)
    rows = {
        (r["query_id"], r["method"]): (r["evidence_documents"], r["recall_at_k"], r["reciprocal_rank"])
        for r in table.to_pylist()
    }
    assert rows == {
        ("a", "influence"): (3, 2 / 3, 1.0),
        ("a", "bm25"): (3, 0.0, 0.0),
        ("b", "influence"): (1, 0.0, 0.0),
        ("b", "bm25"): (1, 1.0, 1.0),
    }
    summary = {
        (r["method"], r["kind"], r["evidence_documents"]): (r["queries"], r["recall_at_k"], r["mrr"])
        for r in summarize_retrieval(table).to_pylist()
    }
    assert summary[("influence", "planted", 0)] == (2, pytest.approx(1 / 3), 0.5)
    assert summary[("bm25", "planted", 3)] == (1, 0.0, 0.0) and summary[("bm25", "planted", 1)] == (1, 1.0, 1.0)
    # another kind's queries with evidence are summarized apart, never pooled with planted facts
    kinds = evidence_retrieval(["f1", "f2", None], ["a", "b", "c"], documents, rankings, ["planted", "reasoning", "x"])
    split = {
        (r["method"], r["kind"], r["evidence_documents"]): (r["queries"], r["mrr"])
        for r in summarize_retrieval(kinds).to_pylist()
    }
    assert split[("influence", "planted", 0)] == (1, 1.0) and split[("influence", "reasoning", 0)] == (1, 0.0)


def test_evidence_documents_lists_each_querys_stating_documents_with_its_frequency():
    documents = Documents([("s", str(i)) for i in range(5)], [[1, 2]] * 5, [""] * 5, [None, "f1", "f2", "f1", "f2"])
    table = evidence_documents(["a", "b", "c", "d"], ["f1", "f2", None, "f3"], documents, [10, None, 3, 1])
    rows = [(r["query_id"], r["frequency"], r["shard"], r["doc_id"]) for r in table.to_pylist()]
    # a's frequency as its query states it; b's, not stated, counted from the documents; c, d: none stated
    assert rows == [("a", 10, "s", "1"), ("a", 10, "s", "3"), ("b", 2, "s", "2"), ("b", 2, "s", "4")]
