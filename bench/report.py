"""Report benchmark: build influence_report from synthetic per-shard statistics, at N and 2N documents.

    python -m bench.report            # 80 queries x 1,000,000 documents in 100 shards, then 2x
    python -m bench.report --quick    # 20 queries x 100,000 documents in 10 shards, then 2x
    python -m bench.report --docs 500000 --shards 50 --queries 40

Doubling adds shards of the same size (the way a corpus grows: more files). Each step runs in its
own subprocess, which reports its own peak RSS (VmHWM, see bench/memory.py): the two halves of
the per-shard summaries (synthetic scores -> `summarize_shard` -> safetensors/Parquet, what
`influence_scores` does after the GEMM), then the report over N documents and over 2N. The
report merges one shard at a time, so its peak memory must not grow with the number of
documents: `report_peak_mem_growth_2x` is peak RSS at 2N over peak RSS at N, and should stay
close to 1.

Output: a human-readable log, then one `name: value` line per figure.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.memory import hwm_bytes

ROOT = Path(__file__).resolve().parents[1]

FIGURES = [
    "documents_1x",
    "documents_2x",
    "shards_1x",
    "queries",
    "summarize_seconds_per_shard",
    "summarize_peak_rss_mb",
    "report_seconds_1x",
    "report_seconds_2x",
    "report_merge_seconds_1x",
    "report_merge_seconds_2x",
    "report_peak_rss_mb_1x",
    "report_peak_rss_mb_2x",
    "report_peak_mem_growth_2x",
]


def child_summarize(args) -> dict:
    from pretrace.store.storage import Storage
    from pretrace.testing.synthetic_shards import write_synthetic_shards

    store = Storage(args.root)
    queries = store.read_parquet("query_gradients/queries.parquet")
    start = time.perf_counter()
    write_synthetic_shards(store, queries, args.docs_per_shard, range(args.first, args.last), k=args.k)
    return {"seconds": time.perf_counter() - start, "shards": args.last - args.first}


def child_report(args) -> dict:
    from pretrace.analyses.analysis import ReportConfig
    from pretrace.analyses.merge import merge_stored
    from pretrace.report.build import make_report, write_report
    from pretrace.store.storage import Storage
    from pretrace.testing.synthetic_shards import synthetic_shard_files

    store = Storage(args.root)
    queries = store.read_parquet("query_gradients/queries.parquet")
    files = synthetic_shard_files(range(args.last))
    start = time.perf_counter()
    stats, top = merge_stored(store, files, args.k)
    merged = time.perf_counter()
    report = make_report(stats, top, queries, ReportConfig(k=args.k), shards=len(files))
    write_report(store, report, prefix=f"influence_report_{args.last}")
    return {
        "seconds": time.perf_counter() - start,
        "merge_seconds": merged - start,
        "documents": stats.n,
        "html_bytes": len(report.html),
    }


def run_child(kind: str, root: str, extra: list[str]) -> tuple[subprocess.Popen, Path]:
    out = Path(root) / f"result-{kind}-{'-'.join(extra)}.json"
    cmd = [sys.executable, "-m", __spec__.name, "--child", kind, "--root", root, "--result", str(out), *extra]
    return subprocess.Popen(cmd, cwd=ROOT), out


def wait(proc_and_out) -> dict:
    proc, out = proc_and_out
    if proc.wait() != 0:
        raise SystemExit(f"benchmark child failed with exit code {proc.returncode}")
    return json.loads(out.read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--docs", type=int, default=None, help="documents at 1x (default 1,000,000; --quick 100,000)")
    p.add_argument("--shards", type=int, default=None, help="shards at 1x (default 100; --quick 10)")
    p.add_argument("--queries", type=int, default=None, help="queries (default 80; --quick 20)")
    p.add_argument("--k", type=int, default=50, help="top/bottom documents per query")
    p.add_argument("--quick", action="store_true", help="a small run for CI (seconds)")
    p.add_argument("--workdir", default=None, help="where to write the shards (default: a temporary folder)")
    p.add_argument("--child", choices=["summarize", "report"], help=argparse.SUPPRESS)
    p.add_argument("--root", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--last", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--docs-per-shard", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.child:
        result = (child_summarize if args.child == "summarize" else child_report)(args)
        result["peak_rss_mb"] = hwm_bytes() / 2**20  # the child's own peak, not ru_maxrss (bench/memory.py)
        Path(args.result).write_text(json.dumps(result))
        return

    docs = args.docs or (100_000 if args.quick else 1_000_000)
    shards = args.shards or (10 if args.quick else 100)
    n_queries = args.queries or (20 if args.quick else 80)
    per_shard = docs // shards

    def log(*a):
        return print(*a, flush=True)

    with tempfile.TemporaryDirectory(prefix="pretrace-bench-report-", dir=args.workdir) as root:
        from pretrace.store.storage import Storage
        from pretrace.testing.synthetic_shards import synthetic_queries

        Storage(root).write_parquet("query_gradients/queries.parquet", synthetic_queries(n_queries))
        log(f"[bench] {n_queries} queries; {shards} x {per_shard:,} documents (1x) and {2 * shards} shards (2x)")
        common = ["--docs-per-shard", str(per_shard), "--k", str(args.k)]
        halves = [
            run_child("summarize", root, ["--first", str(a), "--last", str(b), *common])
            for a, b in ((0, shards), (shards, 2 * shards))
        ]  # two processes, one per core
        summaries = [wait(h) for h in halves]
        per_shard_s = max(s["seconds"] / s["shards"] for s in summaries)
        summarize_peak = max(s["peak_rss_mb"] for s in summaries)
        log(f"[bench] summarized {2 * shards} shards: {per_shard_s:.2f} s per shard, peak {summarize_peak:.0f} MB")
        reports = {}
        for scale, last in (("1x", shards), ("2x", 2 * shards)):
            reports[scale] = wait(run_child("report", root, ["--last", str(last), "--k", str(args.k)]))
            r = reports[scale]
            log(
                f"[bench] report over {r['documents']:,} documents: {r['seconds']:.1f} s "
                f"(merge {r['merge_seconds']:.1f} s), peak {r['peak_rss_mb']:.0f} MB, HTML {r['html_bytes'] / 1e6:.1f} MB"
            )
    figures = {
        "documents_1x": reports["1x"]["documents"],
        "documents_2x": reports["2x"]["documents"],
        "shards_1x": shards,
        "queries": n_queries,
        "summarize_seconds_per_shard": per_shard_s,
        "summarize_peak_rss_mb": summarize_peak,
        "report_seconds_1x": reports["1x"]["seconds"],
        "report_seconds_2x": reports["2x"]["seconds"],
        "report_merge_seconds_1x": reports["1x"]["merge_seconds"],
        "report_merge_seconds_2x": reports["2x"]["merge_seconds"],
        "report_peak_rss_mb_1x": reports["1x"]["peak_rss_mb"],
        "report_peak_rss_mb_2x": reports["2x"]["peak_rss_mb"],
        "report_peak_mem_growth_2x": reports["2x"]["peak_rss_mb"] / reports["1x"]["peak_rss_mb"],
    }
    print("\n| figure | value |\n|---|---|")
    for name in FIGURES:
        print(f"| {name} | {figures[name]:.4g} |")
    print()
    for name in FIGURES:
        value = figures[name]
        print(f"{name}: {value:.4f}" if isinstance(value, float) else f"{name}: {value}")


if __name__ == "__main__":
    main()
