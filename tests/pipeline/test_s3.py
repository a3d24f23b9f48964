"""The pipeline against a real S3 endpoint (moto's server on 127.0.0.1): model, corpus, artefacts."""

import dagster as dg
import pytest

from pipeline.definitions import build_definitions
from pipeline.runner import materialize_pipeline
from pretrace.config import load_config
from pretrace.storage import Storage
from tests.pipeline.project import make_project
from tests.s3server import upload

pytestmark = pytest.mark.integration


def test_pipeline_reads_and_writes_s3(tmp_path, s3_root):
    config_path = make_project(tmp_path, storage=f"{s3_root}/data")
    upload(tmp_path / "model", f"{s3_root}/model")
    upload(tmp_path / "corpus", f"{s3_root}/corpus")
    config = load_config(config_path).model_copy(update={"model": f"{s3_root}/model", "corpus": f"{s3_root}/corpus"})
    instance = dg.DagsterInstance.ephemeral()
    defs = build_definitions(config)
    materialize_pipeline(defs, instance, log=lambda m: None)

    keys = set(Storage(config.storage).list())
    for shard in ("part-a.jsonl", "part-b.jsonl"):
        for asset, suffix in [("corpus_shards", "parquet"), ("ekfac_covariances", "safetensors"),
                              ("ekfac_lambdas", "safetensors"), ("document_gradients", "safetensors"),
                              ("influence_scores", "parquet"), ("influence_scores", "stats.safetensors")]:
            assert f"{asset}/{shard}.{suffix}" in keys
    for key in ["model/model.json", "ekfac_eigenbasis/eigenbasis.safetensors", "ekfac_factors/factors.safetensors",
                "queries/queries.parquet", "query_gradients/query_gradients.safetensors"]:
        assert key in keys
    assert not any(k.rsplit("/", 1)[-1].startswith(".tmp-") for k in keys)

    # A second run reads every stored artefact back from S3: a new query re-scores both shards
    # from the stored factors and document gradients without recomputing them.
    with open(config.queries, "a") as f:
        f.write('{"id": "extra", "kind": "arithmetic", "prompt": "(7 - 4) * 8 =", "completion": " 24"}\n')
    ran = []
    materialize_pipeline(defs, instance, log=ran.append)
    assert ran == ["materializing queries", "materializing query_gradients",
                   "materializing influence_scores[part-a.jsonl]", "materializing influence_scores[part-b.jsonl]",
                   "materializing influence_report"]
    table = Storage(config.storage).read_parquet("influence_scores/part-a.jsonl.parquet")
    assert "extra" in set(table.column("query_id").to_pylist())
