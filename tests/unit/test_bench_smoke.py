"""The benchmarks run end to end on small shapes and print their figures as `name: value` lines."""

import importlib.util
import math
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HAVE_KRONFLUENCE = importlib.util.find_spec("kronfluence") is not None


def run_bench(script: str, *args: str) -> tuple[dict[str, str], str]:
    """Run ``bench/<script>`` with ``args``; its `name: value` figures and its whole stdout."""
    out = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
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
    for method in ("ekfac", "kfac", "identity", "projected"):
        assert -1.0 <= float(values[f"lds_{method}"]) <= 1.0, values


def test_tokenize_memory_benchmark_prints_peaks_as_ratios(tmp_path):
    _, stdout = run_bench("tokenize_memory.py", "--mb", "0.05", "0.2")
    rows = [line.split() for line in stdout.splitlines() if line.strip().startswith(("0.05 MB", "0.2 MB"))]
    assert len(rows) == 3 and rows[0][-3] == "1.00"  # the reference, then the larger one, then the old path
