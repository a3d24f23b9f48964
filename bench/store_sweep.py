"""Which factored int4 store to keep: principal block size k against document rank c, on the demo's model.

    python -m bench.store_sweep                          # ~12 minutes on a shared 2-core CPU
    python -m bench.store_sweep --ks 256 304 --ranks 16 18

The demo's model (the shipped one at the default steps) and a seeded sample of --documents of
its corpus's documents, scored by its queries, exactly and through each (k, k) principal
projection: stored dense in int4, and as rank-c factors in int4 (`document_rank`, one scale per
rank), for every c in --ranks. Per (k, c) it prints the compression (dense float32 gradient
bytes / stored bytes), the mean and minimum per-query Pearson against exact scores, the
two-stage recall of each exact top 100 among the stored top 200, and, against the dense int4
store of the same k, how many times fewer bytes the factors take and how much Pearson they lose.
On the 600-step model of 2026-11-28, the compact store (`COMPACT_STORE`: 304 x 304 at rank 18)
was the widest block whose factors at the smallest rank losing at most 0.02 keep 64x
compression; on the shipped model the demo keeps the whole eigenbasis dense in int4 (k = 512).
Output: a table, then one `name: value` line per figure.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from bench.projection import BASIS, DEMO, compression, demo_setup
from pretrace.analyses.correlation import pearson
from pretrace.influence.document_gradients import DocumentGradients, compute_document_gradients, stored_as
from pretrace.influence.projection import KroneckerProjection
from pretrace.influence.query_gradients import compute_query_gradients
from pretrace.influence.reranking import recall
from pretrace.influence.scores import score_matrix, stream_scores

ROOT = Path(__file__).resolve().parents[1]

DTYPE = "int4"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--ks",
        type=int,
        nargs="+",
        default=[128, 192, 256, 304, 320, 384, 512],
        help="principal block sizes k (k_out = k_in = k, at most each layer's side)",
    )
    p.add_argument("--ranks", type=int, nargs="+", default=[8, 12, 16, 18, 20, 24], help="document ranks c")
    p.add_argument("--documents", type=int, default=512, help="documents scored (a seeded sample of the corpus)")
    p.add_argument("--steps", type=int, default=DEMO.demo_steps, help="training steps (the demo's default)")
    return p.parse_args(argv)


def accuracy(queries, store: DocumentGradients, exact: torch.Tensor) -> tuple[float, float, float]:
    """(mean, min) per-query Pearson of the store's scores against ``exact``, and the recall of
    each exact top 100 among the stored top 200."""
    approx = score_matrix(queries, store)
    values = [pearson(approx[i], exact[i]) for i in range(len(exact))]
    n = exact.shape[1]
    return statistics.mean(values), min(values), recall(approx, exact, min(200, n), min(100, n))


def main(argv=None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        lm, queries, documents, factors, corpus_size = demo_setup(Path(tmp), args.documents, args.steps)
    shapes = lm.layer_shapes()
    print(
        f"# store sweep on the demo's model ({args.steps} steps): {len(documents)} of its {corpus_size} documents, "
        f"{len(queries)} queries, layers {sorted(set(shapes.values()))}, {BASIS} basis, {DTYPE}",
        flush=True,
    )
    exact = stream_scores(lm, compute_query_gradients(lm, factors, queries), documents)
    ids = [str(i) for i in range(len(documents))]
    figures: dict[str, float] = {}
    print("| k | rank | compression | Pearson mean | min | recall@100 | fewer bytes than dense | Pearson lost |")
    print("|---|---|---|---|---|---|---|---|")
    for k in args.ks:
        projection = KroneckerProjection.build(shapes, k, k, basis=BASIS, factors=factors)
        qg = compute_query_gradients(lm, factors, queries, projection=projection)
        stored = compute_document_gradients(lm, documents, ids, projection=projection)
        dense_mean, dense_min, dense_recall = accuracy(qg, stored_as(stored, None, DTYPE), exact)
        dense_ratio = compression(shapes, k, DTYPE)
        print(
            f"| {k} | dense | {dense_ratio:.1f} | {dense_mean:.4f} | {dense_min:.4f} | {dense_recall:.3f} | | |",
            flush=True,
        )
        figures |= {f"compression_k{k}": dense_ratio, f"pearson_k{k}_mean": dense_mean}
        for c in args.ranks:
            mean, low, found = accuracy(qg, stored_as(stored, c, DTYPE), exact)
            ratio = compression(shapes, k, DTYPE, c)
            print(
                f"| {k} | {c} | {ratio:.1f} | {mean:.4f} | {low:.4f} | {found:.3f} | {ratio / dense_ratio:.2f} | "
                f"{dense_mean - mean:.4f} |",
                flush=True,
            )
            name = f"k{k}_c{c}"
            figures |= {
                f"compression_{name}": ratio,
                f"pearson_{name}_mean": mean,
                f"pearson_{name}_min": low,
                f"rerank_recall_at_100_{name}": found,
                f"factored_storage_ratio_{name}": ratio / dense_ratio,
                f"factored_pearson_loss_{name}": dense_mean - mean,
            }
    print()
    for name, value in figures.items():
        print(f"{name}: {value:.4g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
