"""The benchmarks run end to end on small shapes and print their figures as `name: value` lines."""

import importlib.util
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
HAVE_KRONFLUENCE = importlib.util.find_spec("kronfluence") is not None


def run_bench(script: str, *args: str) -> tuple[dict[str, str], str]:
    """Run ``python -m bench.<script>`` with ``args``; its `name: value` figures and its whole stdout."""
    out = subprocess.run(
        [sys.executable, "-m", f"bench.{script.removesuffix('.py')}", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return dict(re.findall(r"^(\w+): (\S+)", out.stdout, flags=re.MULTILINE)), out.stdout


def test_quick_benchmark_prints_every_figure():
    from bench.influence import FIGURES

    values, stdout = run_bench("influence.py", "--quick")
    for name in FIGURES:
        assert name in values, f"{name} missing from the output:\n{stdout[-2000:]}"
        value = float(values[name])
        if name.startswith("kronfluence") and math.isnan(value) and not HAVE_KRONFLUENCE:
            continue  # printed as nan when kronfluence is not installed
        assert math.isfinite(value), f"{name}: {values[name]}"
    assert "| figure | value |" in stdout  # the markdown table for the README


def test_report_benchmark_memory_stays_flat_when_documents_double():
    values, _ = run_bench("report.py", "--docs", "20000", "--shards", "4", "--queries", "10", "--k", "5")
    assert int(values["documents_2x"]) == 2 * int(values["documents_1x"]) == 40_000
    assert float(values["report_peak_mem_growth_2x"]) < 1.15


def test_lds_benchmark_prints_a_score_per_method():
    values, _ = run_bench("lds.py", "--subsets", "4", "--steps", "10")
    for method in ("ekfac", "kfac", "identity", "projected_raw", "projected_whitened", "projected_principal"):
        assert -1.0 <= float(values[f"lds_{method}"]) <= 1.0, values


def test_tokenize_memory_benchmark_prints_peaks_as_ratios(tmp_path):
    _, stdout = run_bench("tokenize_memory.py", "--mb", "0.05", "0.2")
    rows = [line.split() for line in stdout.splitlines() if line.strip().startswith(("0.05 MB", "0.2 MB"))]
    assert len(rows) == 3 and rows[0][-3] == "1.00"  # the reference, then the larger one, then the old path


def test_projection_benchmark_prints_its_figures():
    values, _ = run_bench("projection.py", "--seeds", "1", "--ks", "8", "16", "--ranks", "2")
    assert float(values["compression_k8"]) == 32 and float(values["factored_storage_ratio_k16_c2"]) == 4
    for name in ("pearson_principal_k16_mean", "rerank_recall_at_10_principal_k16", "factored_pearson_loss_k16_c2"):
        assert -1.0 <= float(values[name]) <= 1.0, values


def test_the_projection_benchmarks_factored_store_is_the_pipelines():
    """bench/projection.py factors a stored projected gradient itself (no second pass): the
    same scores as the store `compute_document_gradients(rank=...)` writes."""
    from bench.projection import QUERIES, factored, trained_setup
    from pretrace.influence.document_gradients import compute_document_gradients
    from pretrace.influence.projection import KroneckerProjection
    from pretrace.influence.query_gradients import compute_query_gradients
    from pretrace.influence.scores import score_matrix

    lm, documents, factors = trained_setup()
    documents = documents[:12]
    projection = KroneckerProjection.build(lm.layer_shapes(), 16, 16, seed=1, basis="whitened", factors=factors)
    queries = compute_query_gradients(lm, factors, QUERIES, projection=projection)
    ids = [str(i) for i in range(len(documents))]
    stored = compute_document_gradients(lm, documents, ids, projection=projection)
    expected = score_matrix(queries, compute_document_gradients(lm, documents, ids, projection=projection, rank=3))
    torch.testing.assert_close(score_matrix(queries, factored(stored, 3)), expected, rtol=1e-5, atol=1e-6)


def test_the_projection_benchmarks_sparse_store_keeps_each_documents_largest_entries():
    """`largest_entries` keeps, per document and layer, the entries of largest magnitude with
    their values and signs, zeroes the rest, and keeps everything when asked for every entry."""
    from bench.projection import largest_entries
    from pretrace.influence.document_gradients import DocumentGradients

    grads = torch.randn(5, 4, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    stored = DocumentGradients([str(i) for i in range(5)], {"layer": grads}, torch.zeros(5), None)
    kept = largest_entries(stored, 3).grads["layer"]
    for document, original in zip(kept, grads):
        nonzero = document.flatten().nonzero().flatten()
        assert sorted(nonzero.tolist()) == sorted(original.flatten().abs().topk(3).indices.tolist())
        assert torch.equal(document.flatten()[nonzero], original.flatten()[nonzero])
    assert torch.equal(largest_entries(stored, 24).grads["layer"], grads)


def test_the_demo_benchmarks_measure_every_demo_query_on_its_reference_completion(tmp_path):
    """The demo's queries leave the completion to its model; a bench that scores them on the
    demo's model takes the reference one (the query encodes: no empty completion)."""
    from bench.projection import demo_queries_with_completions
    from pretrace.demo.queries import build_demo_queries

    path = build_demo_queries(tmp_path / "queries.jsonl")
    rows = {row["id"]: row for row in map(json.loads, path.read_text().splitlines())}
    queries = demo_queries_with_completions(path)
    assert len(queries) == len(rows) and any(not row.get("completion") for row in rows.values())
    for q in queries:
        assert q.completion == (rows[q.id].get("completion") or rows[q.id]["reference"]) != ""


def test_the_7b_benchmark_runs_scaled_down_and_writes_every_figure(tmp_path):
    out = tmp_path / "gpu-7b.json"
    values, stdout = run_bench("gpu_7b.py", "--tiny", "--out", str(out))
    written = json.loads(out.read_text())
    assert written["tiny"] is True and written["device"] == "cpu"
    for name in (
        "train_step_tokens_per_s",
        "factor_passes_vs_train_step",
        "score_resident_vs_train_step_tokens_per_s",
        "document_gradients_vs_train_step_tokens_per_s",
        "study_gpu_days_7b_h100",
    ):
        assert math.isfinite(float(values[name])) and float(values[name]) > 0, f"{name}:\n{stdout[-2000:]}"
        assert float(values[name]) == pytest.approx(written[name], rel=1e-3)
    assert written["query_gradients_computed"] == written["queries"]


def test_the_7b_benchmark_stops_before_its_deadline_with_what_it_measured(tmp_path):
    from bench.gpu_7b import extrapolated, main

    out = tmp_path / "gpu-7b.json"
    assert main(["--tiny", "--deadline-s", "0", "--out", str(out)]) == 0
    written = json.loads(out.read_text())
    assert "train_seconds" in written and written["stopped_before"].startswith("covariances")
    assert extrapolated(1.0, 1.5, 2, 32) == 1.0 + 31 * 0.5  # one block's share, times the other 31
