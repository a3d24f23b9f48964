"""Fitting on a sample (`fit_documents`): deterministic, stable when a file is added, validated,
and recorded by the fitting artefacts so that a change refits the factors."""

from __future__ import annotations

import pytest

from pretrace.config import parse_config
from pretrace.errors import InputError
from pretrace.inputs.fit_sample import (
    HASH_RANGE,
    document_hash,
    in_sample,
    sample_threshold,
    sampled_documents,
)
from pretrace.project.artefacts import Input, artefacts

CORPUS = {f"part-{p}.jsonl": [f"{p}-{i}" for i in range(400)] for p in "ab"}
NEW = {"part-c.jsonl": [f"c-{i}" for i in range(400)]}


def sample(fit_documents, corpus: dict[str, list[str]], seed: int = 0) -> set[tuple[str, str]]:
    threshold = sample_threshold(fit_documents, seed, corpus.items())
    return {
        (shard, d)
        for shard, ids in corpus.items()
        for d, kept in zip(ids, in_sample(seed, shard, ids, threshold))
        if kept
    }


def brute_force_count(count: int, corpus: dict[str, list[str]], seed: int = 0) -> set[tuple[str, str]]:
    ranked = sorted((document_hash(seed, shard, d), shard, d) for shard, ids in corpus.items() for d in ids)
    return {(shard, d) for _, shard, d in ranked[:count]}


def test_a_fraction_keeps_each_document_by_its_own_hash():
    drawn = sample(0.25, CORPUS)
    expected = {(s, d) for s, ids in CORPUS.items() for d in ids if document_hash(0, s, d) < HASH_RANGE // 4}
    assert drawn == expected
    assert 150 < len(drawn) < 250  # about a quarter of 800
    assert sample(0.25, CORPUS) == drawn  # deterministic
    assert sample(0.25, CORPUS, seed=1) != drawn  # and seeded
    assert len(sample(1.0, CORPUS)) == 800 and len(sample(None, CORPUS)) == 800


def test_a_fraction_is_stable_when_a_file_is_added():
    before = sample(0.1, CORPUS)
    after = sample(0.1, {**CORPUS, **NEW})
    assert {x for x in after if x[0] != "part-c.jsonl"} == before
    assert any(x[0] == "part-c.jsonl" for x in after)


def test_a_count_keeps_the_documents_of_smallest_hash_and_changes_only_by_new_ones():
    before = sample(100, CORPUS)
    assert before == brute_force_count(100, CORPUS)
    after = sample(100, {**CORPUS, **NEW})
    assert after == brute_force_count(100, {**CORPUS, **NEW}) and len(after) == 100
    new = {x for x in after if x[0] == "part-c.jsonl"}
    assert new and after - new <= before and len(before - after) == len(new)  # each new one pushed one old out


def test_a_count_beyond_the_fit_shards_is_refused():
    with pytest.raises(InputError, match="fit_documents: 801 exceeds the 800 documents of the fit shards"):
        sample(801, CORPUS)


def test_the_planned_number_of_fitted_documents():
    assert [sampled_documents(v, 5_000_000) for v in (None, 0.1, 1.0, 5000, 10**9)] == [
        5_000_000,
        500_000,
        5_000_000,
        5000,
        5_000_000,
    ]


@pytest.mark.parametrize(
    ("value", "parsed"), [(None, None), (0.1, 0.1), (1, 1.0), (1.0, 1.0), (5000, 5000), (5000.0, 5000)]
)
def test_a_fraction_is_at_most_one_and_a_count_a_whole_number_above(value, parsed):
    fit_documents = parse_config({"fit_documents": value}, "pretrace.yaml").fit_documents
    assert fit_documents == parsed and type(fit_documents) is type(parsed)


@pytest.mark.parametrize("value", [0, -0.5, 1.5, "ten", True, float("nan"), [0.1]])
def test_a_bad_sample_is_one_clear_line(value):
    with pytest.raises(InputError) as error:
        parse_config({"fit_documents": value}, "pretrace.yaml")
    (line,) = [line for line in str(error.value).splitlines() if "fit_documents" in line]
    assert "must be a fraction in (0, 1], e.g. 0.1, or a whole count of documents > 1" in line


def test_the_fitting_passes_record_the_sample_and_a_count_reads_every_fit_shard():
    for grouped in (1, 2):
        table = artefacts(layer_groups=grouped)
        by_count = artefacts(layer_groups=grouped, samples_by_count=True)
        for name in ("ekfac_covariances", "ekfac_lambdas"):
            assert "fit_documents" in table[name].config
            assert Input("corpus_shards", "fit_shards") not in table[name].inputs
            assert Input("corpus_shards", "fit_shards") in by_count[name].inputs
        assert by_count["ekfac_eigenbasis"] == table["ekfac_eigenbasis"]
    downstream = {a.name for a in artefacts().values() if "fit_documents" in a.config}
    assert downstream == {"ekfac_covariances", "ekfac_lambdas"}  # the rest follows their new bytes
