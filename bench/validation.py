"""Does influence find the documents that cause the answer? The demo's attribution check.

Runs the whole demo (`pretrace demo`: corpus, a tiny Llama trained for a fixed number of steps,
EK-FAC influence, the `attribution_eval` asset) in a folder and prints one `name: value` line per
figure from the tail-patch summary the pipeline wrote: the mean change in log p(completion)
after one SGD step on each query's top-k documents by influence, by k random documents, by
BM25, by raw-gradient cosine and by raw-gradient dot product, over all queries and per query kind, with 95% bootstrap
intervals, and how often each method beat random on the same query (gradient-normalised
influence too: influence_unit, influence_relatif); then, for the queries that name their evidence
(per kind: planted facts, planted reasoning), the mean reciprocal rank (and recall@k) of the
documents stating it in each method's top k, over all of them and by how many documents state it
(`<kind>_mrr_<method>[_stated<n>x]`); then influence against each other method (cosine, dot
product, BM25, random, the normalised variants) paired over the same queries on both ground
truths: mean difference, sign-flip permutation and Wilcoxon p, and the permutation p
Holm-adjusted across these comparisons; last, the answer search's positive control from the
report (`answer_search_detection_rate[_stated<n>x]`: detected / retrieved, with n).

    python -m bench.validation                 # a fresh demo in a temporary folder (~10 min on 2 cores)
    python -m bench.validation --dir ./demo    # reuse (or create) a demo folder: reruns compute nothing new
    python -m bench.validation --compare-seeds 1   # also a second demo model (seed 1), compared with the first
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

from pretrace.analyses.multiplicity import holm
from pretrace.evaluation.method_comparisons import method_comparisons

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", help="the demo folder (default: a new temporary one)")
    parser.add_argument(
        "--compare-seeds",
        type=int,
        nargs="*",
        default=[],
        metavar="SEED",
        help="pretrace demo --compare-seeds: train and compare demo models of these seeds too",
    )
    args = parser.parse_args()
    folder = Path(args.dir or tempfile.mkdtemp(prefix="pretrace-validation-")).absolute()
    folder.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    compare = ["--compare-seeds", *map(str, args.compare_seeds)] if args.compare_seeds else []
    subprocess.run(
        [sys.executable, "-m", "pretrace.pipeline.cli", "demo", "--dir", str(folder), *compare],
        cwd=folder,
        check=True,
        env={"PYTHONPATH": str(ROOT), **__import__("os").environ},
        stdout=subprocess.DEVNULL,
    )
    results = folder / "data" / "attribution_eval"
    summary = pl.read_parquet(results / "summary.parquet")
    gains = pl.read_parquet(results / "gains.parquet")
    retrieval = pl.read_parquet(results / "retrieval_summary.parquet")
    per_query = pl.read_parquet(results / "retrieval.parquet")
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    print(
        f"# validation {time.strftime('%Y-%m-%d')} on {platform.node()}, commit {commit}, CPython "
        f"{platform.python_version()}, demo in {folder} "
        f"({time.monotonic() - started:.0f} s); k = {gains['k'][0]}, {gains['query_id'].n_unique()} queries"
    )
    for row in summary.iter_rows(named=True):
        name = f"tailpatch_{row['method']}" + ("" if row["kind"] == "all" else f"_{row['kind']}")
        beats = "" if row["beats_random"] != row["beats_random"] else f"; beats random on {row['beats_random']:.0%}"
        print(
            f"{name}: {row['mean_gain']:.4g} [{row['low']:.4g}, {row['high']:.4g}] nats "
            f"({row['queries']} queries{beats})"
        )
    for row in retrieval.iter_rows(named=True):
        by = "" if row["evidence_documents"] == 0 else f"_stated{row['evidence_documents']}x"
        print(
            f"{row['kind']}_mrr_{row['method']}{by}: {row['mrr']:.3f} (recall@k {row['recall_at_k']:.3f}, "
            f"{row['queries']} queries)"
        )
    for line in paired_lines(gains, per_query):
        print(line)
    for line in detection_lines(
        pl.read_parquet(folder / "data" / "influence_report" / "answer_detection_summary.parquet")
    ):
        print(line)


def paired_lines(gains: pl.DataFrame, retrieval: pl.DataFrame, seed: int = 0) -> list[str]:
    """One `name: value` line per comparison of influence with another method on the same queries:
    the baselines and the gradient-normalised variants; reciprocal ranks per query kind."""
    rows = method_comparisons(gains, retrieval, seed=seed)
    adjusted = holm(rows["permutation_p"].to_numpy()) if rows.height else []
    lines = []
    for row, p_holm in zip(rows.iter_rows(named=True), adjusted):
        stated = row["evidence_documents"]
        measure = "tailpatch" if row["measure"] == "tail_patch_gain" else f"{row['kind'] or 'evidence'}_rr"
        subset = f"_stated{stated}x" if stated else ""
        lines.append(
            f"paired_{measure}{subset}_influence_vs_{row['baseline']}: difference {row['mean_difference']:.4g} "
            f"(influence {row['influence_mean']:.4g}, {row['baseline']} {row['baseline_mean']:.4g}; "
            f"{row['queries']} queries; sign-flip p {row['permutation_p']:.3g}, Wilcoxon p {row['wilcoxon_p']:.3g}, "
            f"Holm p {p_holm:.3g} over {rows.height} comparisons)"
        )
    return lines


def detection_lines(summary: pl.DataFrame) -> list[str]:
    """The answer search's positive control (the report's answer_detection_summary): over every
    control query, then by how often the corpus states the evidence."""
    lines = []
    for row in summary.iter_rows(named=True):
        by = "" if row["frequency"] == 0 else f"_stated{row['frequency']}x"
        lines.append(
            f"answer_search_detection_rate{by}: {row['detection_rate']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}] "
            f"({row['detected']} of {row['retrieved']} retrieved queries: answer and every step result found in a "
            f"retrieved evidence document; answer alone {row['answer_detected']}; step results "
            f"{row['steps_detected']} of {row['steps']}; {row['queries']} control queries)"
        )
    return lines


if __name__ == "__main__":
    main()
