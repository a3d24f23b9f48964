"""The asset graph end to end on a tiny project, against the core library."""

import json
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from dagster._core.definitions.partitions.context import partition_loading_context
from safetensors import safe_open

from pretrace.assets.common import GPU_POOL
from pretrace.assets.k8s import GPU_OP_TAGS
from pretrace.assets.partitions import to_pretrace
from pretrace.config import Damping, load_config
from pretrace.influence.document_gradients import DocumentGradients, compute_document_gradients
from pretrace.influence.ekfac import Factors, fit_factors
from pretrace.influence.quantization import dequantize, quantize
from pretrace.influence.query_gradients import compute_query_gradients
from pretrace.influence.scores import stream_scores
from pretrace.inputs.batching import batches
from pretrace.inputs.corpus import read_records, tokenize_documents
from pretrace.inputs.query_file import queries_from_table
from pretrace.model.adapter import load_model
from pretrace.pipeline.definitions import build_definitions
from pretrace.pipeline.runner import asset_order, executable
from pretrace.project.artefacts import Input, artefacts
from pretrace.project.provenance import Project
from pretrace.report.serve import report_url
from pretrace.testing.project import QUERIES, make_project, run_pipeline, write_corpus_file

ALL_ASSETS = [
    "corpus_shards",
    "model",
    "ekfac_covariances",
    "ekfac_eigenbasis",
    "ekfac_lambdas",
    "ekfac_factors",
    "queries",
    "completions",
    "query_gradients",
    "document_gradients",
    "influence_scores",
    "reranked_scores",
    "attribution_eval",
    "influence_report",
]
SOURCES = {"corpus_files", "checkpoint", "query_file"}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    # three layer groups: the fitting passes a partition per (shard, group), the scoring passes in the
    # fewest groups their own steps fit in (one: no device limit here), checked below against the
    # core library ungrouped
    config = load_config(make_project(root, fit_shards=["part-a.jsonl", "part-b.jsonl"], layer_groups=3))
    ran = run_pipeline(config)
    return config, ran


@pytest.mark.parametrize("projection", [None, [8, 8]])
def test_definitions_load_and_mirror_the_artefact_table(tmp_path, projection):
    config = load_config(make_project(tmp_path)).model_copy(update={"projection": projection})
    defs = build_definitions(config)
    dg.Definitions.validate_loadable(defs)
    specs = {spec.key.to_user_string(): spec for spec in defs.resolve_all_asset_specs()}
    assert set(specs) == set(ALL_ASSETS) | SOURCES
    # Dagster's graph (what the UI draws and marks stale) is the artefact table's graph; a
    # projection in the eigenbasis (the default basis, principal) makes document gradients read the factors.
    table = artefacts(projects_with_factors=projection is not None)
    assert (Input("ekfac_factors") in table["document_gradients"].inputs) == (projection is not None)
    for artefact in table.values():
        upstream = {i.name for i in artefact.inputs}
        upstream = {"corpus_files" if u == "corpus_file" else u for u in upstream}
        assert {d.asset_key.to_user_string() for d in specs[artefact.name].deps} == upstream, artefact.name
    order = asset_order(defs)
    assert order.index("model") < order.index("corpus_shards")
    assert (order.index("ekfac_factors") < order.index("document_gradients")) == (projection is not None)


def test_layer_groups_partition_the_fitting_assets_as_the_artefact_table_does(tmp_path):
    """Dagster's partitions of every asset are the project's (in pretrace's names), and each
    group's eigenbasis reads that group's covariances of every fit shard, each lambdas partition
    its group's eigenbasis: the dependencies the UI, backfills and pods follow."""
    config = load_config(make_project(tmp_path, layer_groups=2))
    defs = build_definitions(config)
    dg.Definitions.validate_loadable(defs)
    project, instance = Project(config), dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("shard", project.shards)
    graph = defs.resolve_asset_graph()
    with partition_loading_context(dynamic_partitions_store=instance):
        for spec in defs.resolve_all_asset_specs():
            if spec.key.to_user_string() not in project.graph:
                continue
            partitions = spec.partitions_def
            keys = [to_pretrace(partitions, k) for k in partitions.get_partition_keys()] if partitions else [None]
            assert sorted(keys, key=str) == sorted(
                project.partitions(project.graph[spec.key.to_user_string()]), key=str
            )

        def parents(child, partition, parent):
            return set(
                graph.get_parent_partition_keys_for_child(
                    partition, dg.AssetKey(parent), dg.AssetKey(child)
                ).partitions_subset.get_partition_keys()
            )

        assert parents("ekfac_eigenbasis", "group-1", "ekfac_covariances") == {f"group-1|{s}" for s in project.shards}
        lambdas = dg.MultiPartitionKey({"shard": project.shards[0], "group": "group-0"})
        assert parents("ekfac_lambdas", lambdas, "ekfac_eigenbasis") == {"group-0"}
        assert parents("ekfac_lambdas", lambdas, "corpus_shards") == {project.shards[0]}
    assert {s.key.to_user_string(): s.partitions_def for s in defs.resolve_all_asset_specs()}["ekfac_factors"] is None
    # each (shard, group) is a run of its own in the GPU pool, its pod requesting a GPU on Kubernetes
    for name in ("ekfac_covariances", "ekfac_eigenbasis", "ekfac_lambdas"):
        asset = defs.resolve_assets_def(name)
        assert asset.op.name == f"{name}_in_2_groups" and asset.op.pool == GPU_POOL
        assert json.loads(asset.op.tags["dagster-k8s/config"]) == GPU_OP_TAGS["dagster-k8s/config"]
        assert asset.backfill_policy == dg.BackfillPolicy.multi_run(1)


def test_code_versions_carry_the_settings_each_asset_depends_on(tmp_path):
    config = load_config(make_project(tmp_path))

    def versions(c):
        return {s.key.to_user_string(): s.code_version for s in build_definitions(c).resolve_all_asset_specs()}

    before, after = versions(config), versions(config.model_copy(update={"damping": Damping(relative=0.3)}))
    assert {k for k in before if before[k] != after[k]} == {"ekfac_factors"}  # the UI shows it stale, and only it


def test_every_asset_materializes_and_scores_equal_the_core_library(project):
    config, ran = project
    shards = ["part-a.jsonl", "part-b.jsonl"]
    assert {r.split("[")[0] for r in ran} == set(ALL_ASSETS)
    assert [r for r in ran if r.startswith("ekfac_eigenbasis")] == [f"ekfac_eigenbasis[group-{g}]" for g in range(3)]
    assert sum(r.startswith("ekfac_lambdas") for r in ran) == len(shards) * 3
    # The same computation with the core library alone, no Dagster.
    lm = load_model(config.model, device="cpu")
    per_shard = {
        s: tokenize_documents(read_records(f"{config.corpus}/{s}"), lm.tokenizer, config.max_length) for s in shards
    }
    sequences = [ids for t in per_shard.values() for ids in t.column("input_ids").to_pylist()]
    factors = fit_factors(
        lm,
        lambda: (
            b for s in shards for _, b in batches(per_shard[s].column("input_ids").to_pylist(), 4, lm.pad_token_id)
        ),
    )
    with safe_open(Path(config.storage, "ekfac_factors", "factors.safetensors"), framework="pt") as f:
        stored = Factors.from_tensors({k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata()))
    for name in factors.layers:  # a layer group at a time gives the same factors as one pass
        torch.testing.assert_close(stored.lambdas[name], factors.lambdas[name], rtol=1e-5, atol=1e-7)
    written = pq.read_table(f"{config.storage}/completions/completions.parquet").to_pylist()
    assert [(c["id"], c["source"]) for c in written] == [
        (q["id"], "given" if "completion" in q else "generated") for q in QUERIES
    ]
    # the generated completion is the model's own greedy continuation, to the end of its context
    prompt = lm.tokenizer(QUERIES[1]["prompt"], return_tensors="pt")
    generated = lm.model.generate(**prompt, do_sample=False, max_new_tokens=lm.max_context - prompt.input_ids.shape[1])
    assert written[1]["completion_ids"] == generated[0, prompt.input_ids.shape[1] :].tolist()
    queries = queries_from_table(pa.Table.from_pylist(written))
    expected = stream_scores(lm, compute_query_gradients(lm, factors, queries), sequences)
    got = torch.cat(
        [_score_matrix(config.storage, s, per_shard[s].column("doc_id").to_pylist()) for s in shards], dim=1
    )
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-4 * float(expected.abs().max()))


def _score_matrix(storage, shard, doc_ids):
    table = pq.read_table(f"{storage}/influence_scores/{shard}.parquet").to_pylist()
    assert len(table) == len(QUERIES) * len(doc_ids)
    index = {(r["query_id"], r["doc_id"]): r["score"] for r in table}
    return torch.tensor([[index[(q["id"], d)] for d in doc_ids] for q in QUERIES])


def test_the_report_shows_its_tables_plots_and_link_in_dagster(project):
    config, _ = project
    defs = build_definitions(config)
    result = dg.materialize(
        executable(defs),
        selection=["influence_report"],
        resources=defs.resources,
        instance=dg.DagsterInstance.ephemeral(),
    )
    metadata = result.asset_materializations_for_node("influence_report")[0].metadata
    assert metadata["shards"].value == 2 and metadata["queries"].value == len(QUERIES)
    assert metadata["report"].value == report_url()  # on the report server: a browser opens it from the UI
    assert metadata["report_path"].value == f"{config.storage}/influence_report/report.html"
    correlation = metadata["correlation"]
    assert isinstance(correlation, dg.TableMetadataValue)
    assert [c.name for c in correlation.schema.columns][:3] == ["group", "pairs", "mean_r"]
    assert metadata["plot_correlation_matrix"].value == report_url("figures/correlation_matrix.png")
    assert result.get_asset_check_evaluations()[0].passed  # it covers every current shard
    html = Path(config.storage, "influence_report", "report.html").read_text()
    assert "Stored scores are exact: unprojected document gradients, dense query gradients." in html
    assert "exact score (rank)" not in html and "Two-stage retrieval" not in html


def test_a_new_corpus_file_runs_only_its_own_partition_with_fixed_fit_shards(project):
    config, _ = project
    write_corpus_file(Path(config.corpus) / "part-c.jsonl", 6, 3, "c")
    ran = run_pipeline(config)
    assert ran == [
        "corpus_shards[part-c.jsonl]",
        "document_gradients[part-c.jsonl]",
        "influence_scores[part-c.jsonl]",
        "attribution_eval",
        "reranked_scores",
        "influence_report",
    ]


def test_with_fit_shards_all_a_new_file_refits_the_factors(tmp_path):
    # fitted on a sampled fraction: the old shards' samples, and so their covariances, stay as they were
    config = load_config(make_project(tmp_path, fit_documents=0.5))
    run_pipeline(config)
    write_corpus_file(Path(config.corpus) / "part-c.jsonl", 6, 3, "c")
    ran = run_pipeline(config)
    assert {"ekfac_covariances[part-c.jsonl]", "ekfac_eigenbasis", "ekfac_factors", "query_gradients"} <= set(ran)
    assert not {"ekfac_covariances[part-a.jsonl]", "ekfac_covariances[part-b.jsonl]"} & set(ran)
    assert "document_gradients[part-a.jsonl]" not in ran  # document gradients never depend on the factors


def test_a_new_query_recomputes_scores_but_no_document_gradients(project):
    config, _ = project
    with open(config.queries, "a") as f:
        f.write('{"id": "new", "kind": "arithmetic", "prompt": "(7 - 4) * 8 =", "completion": " 24", "answer": "24"}\n')
    ran = run_pipeline(config)
    assert ran[:3] == ["queries", "completions", "query_gradients"]
    assert ran[-3:] == ["attribution_eval", "reranked_scores", "influence_report"]
    assert sorted(ran[3:-3]) == [f"influence_scores[{s}]" for s in Project(config).shards]


def test_progress_lines_follow_the_configured_interval(monkeypatch):
    from types import SimpleNamespace

    from pretrace.assets.common import PROGRESS_INTERVAL_ENV, progress_interval, progress_logger

    monkeypatch.delenv(PROGRESS_INTERVAL_ENV, raising=False)
    assert progress_interval() == 10.0
    lines: list[str] = []
    context = SimpleNamespace(log=SimpleNamespace(log=lambda level, line: lines.append(line)))
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


def test_the_projection_check_warns_when_the_stored_scores_lose_the_ranking(tmp_path):
    from pretrace.pipeline.runner import materialize_pipeline

    config, instance = load_config(make_project(tmp_path, projection=[1, 1])), dg.DagsterInstance.ephemeral()
    lines: list[str] = []
    materialize_pipeline(build_definitions(config), instance, log=lines.append)
    warned = [
        line for line in lines if line.startswith("warning: influence_scores[part-a.jsonl]: projection_error_check:")
    ]
    assert len(warned) == 1 and "raise `projection`" in warned[0]  # `pretrace run` says it, and goes on
    defs = build_definitions(config)
    result = dg.materialize(
        executable(defs),
        selection=["influence_scores"],
        partition_key="part-a.jsonl",
        resources=defs.resources,
        instance=instance,
    )
    (check,) = [e for e in result.get_asset_check_evaluations() if e.check_name == "projection_error_check"]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    # the checks ran in the asset's own step: no step (on a cluster, no pod) of their own
    assert {e.step_key for e in result.all_events if e.step_key} == {"influence_scores"}
    assert check.metadata["pearson_mean"].value < 0.9 and 10 <= check.metadata["documents"].value <= 16
    assert "raise `projection`, try `projection_basis` `whitened`" in check.description  # the basis not in use
    # a larger projection in fewer bits: 2 x (1 byte of codes + a 4-byte scale) per layer against 4 bytes
    assert (
        "`projection` [2, 2] with `stored_gradient_dtype` int4 takes 2.5x the bytes of this store" in check.description
    )
    # measured once, when the shard was scored, and stated by the report
    accuracy = json.loads((tmp_path / "data" / "influence_scores" / "part-a.jsonl.accuracy.json").read_text())
    assert accuracy["pearson_mean"] == pytest.approx(check.metadata["pearson_mean"].value)
    assert not accuracy["exact"] and accuracy["projection"] == {
        "k_out": 1,
        "k_in": 1,
        "basis": "principal",
    }  # no seed: nothing random
    html = (tmp_path / "data" / "influence_report" / "report.html").read_text()
    assert "Stored scores are approximate (document gradients projected to [1, 1] principal per layer)" in html
    shards = pq.read_table(tmp_path / "data" / "influence_report" / "score_accuracy.parquet").to_pylist()
    assert {r["shard"]: r["pearson_mean"] for r in shards}["part-a.jsonl"] == pytest.approx(accuracy["pearson_mean"])
    _assert_reranked_exactly(config)
    assert "exact score (rank)" in html and "Two-stage retrieval: each query's top and bottom 5 documents" in html


@pytest.mark.parametrize("dtype", ["bfloat16", "int4"])
def test_a_rounded_gradient_store_rounds_each_gradient_once_and_its_error_is_measured_and_stated(tmp_path, dtype):
    """`stored_gradient_dtype: bfloat16` stores half the bytes of float32 document gradients, int4
    an eighth (two codes a byte, and a scale per row); the scores are then approximate, checked
    against exact ones on every shard and said so, and two-stage retrieval re-scores the top
    lists exactly (they are not taken for exact scores)."""
    config = load_config(make_project(tmp_path, stored_gradient_dtype=dtype))
    run_pipeline(config)
    data = Path(config.storage)
    with safe_open(data / "document_gradients" / "part-a.jsonl.safetensors", framework="pt") as f:
        tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    lm = load_model(config.model, device="cpu")
    table = pq.read_table(data / "corpus_shards" / "part-a.jsonl.parquet")
    exact = compute_document_gradients(
        lm, table.column("input_ids").to_pylist(), table.column("doc_id").to_pylist(), batch_size=config.batch_size
    )
    if dtype == "bfloat16":
        assert {t.dtype for k, t in tensors.items() if k != "losses"} == {torch.bfloat16}
    else:
        assert {t.dtype for k, t in tensors.items() if k.endswith("::scales")} == {torch.float32}
        assert {t.dtype for k, t in tensors.items() if k != "losses" and "::" not in k} == {torch.uint8}
    stored = DocumentGradients.from_tensors(tensors, metadata)
    assert stored.dtype == dtype
    for name, value in exact.grads.items():  # the float32 gradients, rounded once
        rounded = value.bfloat16() if dtype == "bfloat16" else dequantize(*quantize(value, 4))
        assert torch.equal(stored.dense(name), rounded)
    accuracy = json.loads((data / "influence_scores" / "part-a.jsonl.accuracy.json").read_text())
    assert not accuracy["exact"] and accuracy["stored_dtype"] == dtype
    assert accuracy["pearson_mean"] > (0.999 if dtype == "bfloat16" else 0.99)
    html = (data / "influence_report" / "report.html").read_text()
    assert f"Stored scores are approximate (document gradients stored in {dtype})" in html
    _assert_reranked_exactly(config)


def _assert_reranked_exactly(config) -> None:
    """Two-stage retrieval's table: every query's stored top and bottom top_k over both shards,
    with the exact scores the core library streams for those documents, ranked by them."""
    project = Project(config)
    fitted = project.graph["ekfac_factors"]
    factors = project.store.reader(fitted, project.store.manifest(fitted)).state()
    lm = load_model(config.model, device="cpu")
    data = Path(config.storage)
    tokens = {
        (s, r["doc_id"]): r["input_ids"]
        for s in project.shards
        for r in pq.read_table(data / "corpus_shards" / f"{s}.parquet", columns=["doc_id", "input_ids"]).to_pylist()
    }
    rows = pq.read_table(data / "reranked_scores" / "reranked.parquet").to_pylist()
    assert len(rows) == 2 * len(QUERIES) * config.top_k
    documents = sorted({(r["shard"], r["doc_id"]) for r in rows})
    queries = queries_from_table(pq.read_table(data / "completions" / "completions.parquet"))
    exact = stream_scores(lm, compute_query_gradients(lm, factors, queries), [tokens[d] for d in documents]).double()
    for q, query in enumerate(queries):
        for side in ("top", "bottom"):
            mine = sorted(
                (r for r in rows if r["query_id"] == query.id and r["side"] == side), key=lambda r: r["exact_rank"]
            )
            expected = [float(exact[q, documents.index((r["shard"], r["doc_id"]))]) for r in mine]
            tolerance = 1e-6 * float(exact.abs().max())
            assert [r["exact_score"] for r in mine] == pytest.approx(expected, rel=1e-4, abs=tolerance)
            descending = expected if side == "top" else [-e for e in expected]  # in order, up to rounding between ties
            assert all(a >= b - tolerance for a, b in zip(descending, descending[1:]))
            assert sorted(r["stored_rank"] for r in mine) == list(range(1, config.top_k + 1))


def test_two_models_over_the_same_corpus_and_queries_are_compared(tmp_path):
    """A second checkpoint under `compare_models`: its whole graph under `b/`, its artefacts under
    <storage>/models/b, and a comparison equal to the measures computed from both stored score
    matrices; a changed compared checkpoint recomputes its own graph and the comparison only."""
    from pretrace.testing.tiny import tiny_model, tiny_tokenizer

    config_path = make_project(tmp_path, compare_models={"b": {"model": "model-b"}})
    tiny_model("llama", seed=8).save_pretrained(tmp_path / "model-b")
    tiny_tokenizer().save_pretrained(tmp_path / "model-b")
    config = load_config(config_path)
    ran = run_pipeline(config)
    main = {r for r in ran if "/" not in r}
    assert {r.split("[")[0] for r in ran if r.startswith("b/")} == {f"b/{a}" for a in ALL_ASSETS}
    assert {r.split("[")[0] for r in main} == set(ALL_ASSETS) | {"model_comparison"}
    assert ran.index("model_comparison") > max(
        ran.index(f"b/influence_scores[{s}]") for s in ("part-a.jsonl", "part-b.jsonl")
    )
    assert (tmp_path / "data" / "models" / "b" / "influence_scores" / "part-a.jsonl.parquet").exists()

    compared = pq.read_table(tmp_path / "data" / "model_comparison" / "comparison.parquet").to_pylist()
    shards = ["part-a.jsonl", "part-b.jsonl"]
    docs = {
        s: pq.read_table(tmp_path / "data" / "corpus_shards" / f"{s}.parquet").column("doc_id").to_pylist()
        for s in shards
    }
    this = torch.cat([_score_matrix(config.storage, s, docs[s]) for s in shards], dim=1).double()
    other = torch.cat([_score_matrix(f"{config.storage}/models/b", s, docs[s]) for s in shards], dim=1).double()
    for q, row in enumerate(compared):
        assert (row["query_id"], row["model"], row["documents"]) == (QUERIES[q]["id"], "b", this.shape[1])
        expected = torch.corrcoef(torch.stack([this[q], other[q]]))[0, 1].item()
        assert row["pearson"] == pytest.approx(expected, abs=1e-9)
    html = (tmp_path / "data" / "influence_report" / "report.html").read_text()
    assert 'id="models"' in html and "Against model b: per shared query" in html

    assert run_pipeline(config) == []  # then everything is current
    tiny_model("llama", seed=9).save_pretrained(tmp_path / "model-b")  # the compared model retrained
    rerun = run_pipeline(config)
    assert {r for r in rerun if "/" not in r} == {"model_comparison", "influence_report"}
    assert f"b/influence_scores[{shards[0]}]" in rerun and "b/model" in rerun


def test_launchpad_settings_are_refused_with_what_to_do_instead(tmp_path):
    """A run config for the resource would fall back to class defaults for every setting it does
    not name (another model, corpus and storage): refused at once, before anything is read."""
    from pretrace.assets.common import PER_RUN_SETTINGS

    defs = build_definitions(load_config(make_project(tmp_path)))
    result = dg.materialize(
        executable(defs),
        selection=["queries"],
        resources=defs.resources,
        run_config={"resources": {"pretrace": {"config": {"top_k": 6}}}},
        raise_on_error=False,
    )
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    assert failure.step_failure_data.user_failure_data.description == PER_RUN_SETTINGS
    assert not (tmp_path / "data" / "queries").exists()
