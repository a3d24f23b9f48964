"""The asset graph end to end on a tiny project, against the core library."""

from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.definitions import build_definitions
from pipeline.runner import materialize_pipeline
from pretrace.batching import batches
from pretrace.config import load_config
from pretrace.corpus import read_records, tokenize_documents
from pretrace.ekfac import fit_factors
from pretrace.model import load_model
from pretrace.queries import Query, compute_query_gradients
from pretrace.scores import stream_scores
from tests.pipeline.project import QUERIES, make_project, write_corpus_file

ALL_ASSETS = ["corpus_shards", "model", "ekfac_covariances", "ekfac_eigenbasis", "ekfac_lambdas", "ekfac_factors",
              "queries", "query_gradients", "document_gradients", "influence_scores", "influence_report"]


def materialized(instance, asset):
    """(partition, run_id) of every materialization of an asset, from the event log."""
    records = instance.fetch_materializations(dg.AssetKey(asset), limit=1000).records
    return [(r.asset_materialization.partition, r.run_id) for r in records]


def model_version(instance):
    record = instance.fetch_materializations(dg.AssetKey("model"), limit=1).records[0]
    return record.asset_materialization.tags["dagster/data_version"]


@pytest.fixture
def project(tmp_path):
    config_path = make_project(tmp_path)
    config = load_config(config_path)
    instance = dg.DagsterInstance.ephemeral()
    defs = build_definitions(config)
    shards = materialize_pipeline(defs, instance, log=lambda m: None)
    return config, defs, instance, shards


def test_definitions_load_and_validate(tmp_path):
    defs = build_definitions(load_config(make_project(tmp_path)))
    dg.Definitions.validate_loadable(defs)
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert keys == set(ALL_ASSETS) | {"corpus_files"}


def test_every_asset_materializes_and_scores_equal_the_core_library(project):
    config, defs, instance, shards = project
    assert shards == ["part-a.jsonl", "part-b.jsonl"]
    for asset in ALL_ASSETS:
        assert materialized(instance, asset), asset
    # The same computation with the core library alone, no Dagster.
    lm = load_model(config.model, device="cpu")
    per_shard = {s: tokenize_documents(read_records(f"{config.corpus}/{s}"), lm.tokenizer, config.max_length) for s in shards}
    sequences = [ids for t in per_shard.values() for ids in t.column("input_ids").to_pylist()]
    factors = fit_factors(lm, lambda: (b for s in shards for _, b in batches(per_shard[s].column("input_ids").to_pylist(), 4, lm.pad_token_id)))
    queries = [Query(q["id"], q["prompt"], q["completion"]) for q in QUERIES]
    expected = stream_scores(lm, compute_query_gradients(lm, factors, queries), sequences)
    got = torch.cat([_score_matrix(config.storage, s, per_shard[s].column("doc_id").to_pylist()) for s in shards], dim=1)
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-4 * float(expected.abs().max()))


def _score_matrix(storage, shard, doc_ids):
    table = pq.read_table(f"{storage}/influence_scores/{shard}.parquet").to_pylist()
    assert len(table) == len(QUERIES) * len(doc_ids)
    index = {(r["query_id"], r["doc_id"]): r["score"] for r in table}
    return torch.tensor([[index[(q["id"], d)] for d in doc_ids] for q in QUERIES])


def test_a_new_corpus_file_runs_only_its_own_partition(project):
    config, defs, instance, _ = project
    before = {a: materialized(instance, a) for a in ALL_ASSETS}
    write_corpus_file(Path(config.corpus) / "part-c.jsonl", 6, 3, "c")
    materialize_pipeline(defs, instance, log=lambda m: None)
    new = {a: [m for m in materialized(instance, a) if m not in before[a]] for a in ALL_ASSETS}
    assert [p for p, _ in new["corpus_shards"]] == ["part-c.jsonl"]
    assert [p for p, _ in new["document_gradients"]] == ["part-c.jsonl"]
    assert [p for p, _ in new["influence_scores"]] == ["part-c.jsonl"]
    for asset in ["model", "ekfac_covariances", "ekfac_eigenbasis", "ekfac_lambdas", "ekfac_factors", "query_gradients"]:
        assert new[asset] == [], asset
    assert len(new["influence_report"]) == 1


def test_a_new_query_recomputes_scores_but_no_document_gradients(project):
    config, defs, instance, shards = project
    before = {a: materialized(instance, a) for a in ALL_ASSETS}
    with open(config.queries, "a") as f:
        f.write('{"id": "new", "kind": "arithmetic", "prompt": "(7 - 4) * 8 =", "completion": " 24", "answer": "24"}\n')
    materialize_pipeline(defs, instance, log=lambda m: None)
    new = {a: [m for m in materialized(instance, a) if m not in before[a]] for a in ALL_ASSETS}
    assert new["document_gradients"] == [] and new["ekfac_factors"] == []
    assert len(new["query_gradients"]) == 1
    assert sorted(p for p, _ in new["influence_scores"]) == shards


def test_a_changed_model_recomputes_everything(project):
    config, defs, instance, shards = project
    before = {a: materialized(instance, a) for a in ALL_ASSETS}
    old_version = model_version(instance)
    from tests.tiny import tiny_model

    tiny_model("llama", seed=99).save_pretrained(config.model)  # retrained weights, same shapes
    materialize_pipeline(defs, instance, log=lambda m: None)
    new = {a: [m for m in materialized(instance, a) if m not in before[a]] for a in ALL_ASSETS}
    assert model_version(instance) != old_version
    for asset in ["model", "ekfac_eigenbasis", "ekfac_factors", "query_gradients", "influence_report"]:
        assert len(new[asset]) == 1, asset
    for asset in ["corpus_shards", "ekfac_covariances", "ekfac_lambdas", "document_gradients", "influence_scores"]:
        assert sorted(p for p, _ in new[asset]) == shards, asset


def test_progress_lines_follow_the_configured_interval(monkeypatch):
    from types import SimpleNamespace

    from assets.common import PROGRESS_INTERVAL_ENV, progress_interval, progress_logger

    monkeypatch.delenv(PROGRESS_INTERVAL_ENV, raising=False)
    assert progress_interval() == 10.0
    lines: list[str] = []
    context = SimpleNamespace(log=SimpleNamespace(info=lines.append))
    monkeypatch.setenv(PROGRESS_INTERVAL_ENV, "0")
    advance = progress_logger(context, 6, "documents")
    for _ in range(3):
        advance(2)
    assert [line.split(" (")[0] for line in lines] == ["documents: 2/6", "documents: 4/6", "documents: 6/6"]
    lines.clear()
    monkeypatch.setenv(PROGRESS_INTERVAL_ENV, "3600")
    advance = progress_logger(context, 6, "documents")
    for _ in range(3):
        advance(2)
    assert [line.split(" (")[0] for line in lines] == ["documents: 6/6"]  # only the last
    monkeypatch.setenv(PROGRESS_INTERVAL_ENV, "soon")
    with pytest.raises(ValueError, match=r"PRETRACE_PROGRESS_INTERVAL_S='soon' is not a number"):
        progress_interval()
