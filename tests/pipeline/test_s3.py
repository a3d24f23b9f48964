"""The pipeline against a real S3 endpoint (moto's server on 127.0.0.1): model, corpus and
artefacts on S3, and storage as the truth there too (a wiped prefix, a killed run)."""

import dagster as dg
import pytest

from pretrace.config import load_config
from pretrace.store.storage import Storage
from pretrace.testing.project import clean_run_snapshot, make_project, pretrace, run_pipeline, snapshot
from tests.pipeline.test_provenance import assert_killed, kill_at, materialized
from tests.s3server import upload

pytestmark = pytest.mark.integration
SHARDS = ("part-a.jsonl", "part-b.jsonl")


@pytest.fixture
def s3_project(tmp_path, s3_root):
    """A tiny project whose model, corpus and storage are on S3, run once: (config path, config)."""
    config_path = make_project(tmp_path, storage=f"{s3_root}/data")
    upload(tmp_path / "model", f"{s3_root}/model")
    upload(tmp_path / "corpus", f"{s3_root}/corpus")
    config_path.write_text(
        config_path.read_text()
        .replace("model: model", f"model: {s3_root}/model")
        .replace("corpus: corpus", f"corpus: {s3_root}/corpus")
    )
    config = load_config(config_path)
    assert config.model.startswith("s3://") and config.corpus.startswith("s3://")
    run_pipeline(config)
    return config_path, config


def test_every_artefact_and_its_manifest_is_an_s3_object(s3_project):
    _, config = s3_project
    keys = set(Storage(config.storage).list())
    for shard in SHARDS:
        for asset, suffixes in [
            ("corpus_shards", ["parquet"]),
            ("ekfac_covariances", ["safetensors"]),
            ("ekfac_lambdas", ["safetensors"]),
            ("document_gradients", ["safetensors"]),
            ("influence_scores", ["parquet", "stats.safetensors", "top.parquet"]),
        ]:
            assert {f"{asset}/{shard}.{s}" for s in [*suffixes, "manifest.json"]} <= keys
    for key in [
        "model/model.json",
        "ekfac_eigenbasis/eigenbasis.safetensors",
        "ekfac_factors/factors.safetensors",
        "queries/queries.parquet",
        "query_gradients/query_gradients.safetensors",
        "influence_report/report.html",
    ]:
        assert {key, key.rsplit("/", 1)[0] + "/manifest.json"} <= keys
    assert not any(k.rsplit("/", 1)[-1].startswith(".pretrace-tmp.") for k in keys)


def test_a_wiped_s3_prefix_is_recomputed_to_the_same_bytes(s3_project):
    _, config = s3_project
    before = snapshot(config.storage)
    instance = dg.DagsterInstance.ephemeral()
    assert run_pipeline(config, instance) == []
    store = Storage(config.storage)
    for key in store.list():
        store.delete(key)
    assert len(run_pipeline(config, instance)) == 19
    assert snapshot(config.storage) == before


def test_a_new_query_then_a_kill_during_influence_scores_on_s3(s3_project, tmp_path, s3_root):
    config_path, config = s3_project
    project = config_path.parent
    with open(config.queries, "a") as f:
        f.write('{"id": "extra", "kind": "arithmetic", "prompt": "(7 - 4) * 8 =", "completion": " 24"}\n')
    assert_killed(kill_at(f"influence_scores/{SHARDS[1]}", 2, project))
    rerun = pretrace("run", "--config", "pretrace.yaml", cwd=project)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert materialized(rerun) == [
        f"influence_scores[{SHARDS[1]}]",
        "attribution_eval",
        "reranked_scores",
        "influence_report",
    ]
    table = Storage(config.storage).read_parquet(f"influence_scores/{SHARDS[1]}.parquet")
    assert "extra" in set(table.column("query_id").to_pylist())
    assert snapshot(config.storage) == clean_run_snapshot(config, f"{s3_root}/scratch")


def test_layer_group_partitions_are_nested_s3_keys_and_a_wiped_prefix_comes_back_the_same(tmp_path, s3_root):
    config = load_config(make_project(tmp_path, storage=f"{s3_root}/grouped", layer_groups=2))
    ran = run_pipeline(config)
    keys = set(Storage(config.storage).list())
    for group in ("group-0", "group-1"):
        assert {f"ekfac_eigenbasis/{group}.{s}" for s in ("safetensors", "manifest.json")} <= keys
        for shard in SHARDS:
            for asset in ("ekfac_covariances", "ekfac_lambdas"):
                assert {f"{asset}/{shard}/{group}.{s}" for s in ("safetensors", "manifest.json")} <= keys
    before = snapshot(config.storage)
    store = Storage(config.storage)
    for key in store.list():
        store.delete(key)
    assert sorted(run_pipeline(config)) == sorted(ran)
    assert snapshot(config.storage) == before
