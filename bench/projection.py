"""How much of the exact EK-FAC scores a projected store keeps, on a trained model.

    python bench/projection.py            # ~2 minutes on a shared 2-core CPU
    python bench/projection.py --seeds 3  # quicker

The model is the tiny Llama of the tests (MLP layers 64 x 32 and 32 x 64), trained for a few
seconds on templated sentences: a random model's scores have no structure, so accuracy figures
on it say little. For each projection basis (raw, whitened) and k in --ks, over projection seeds
0..--seeds-1, it prints the mean and the minimum over (seed, query) of the Pearson correlation
between projected and exact scores of every document, and the compression (dense gradient size
/ stored size); then, at the largest k, the same for document gradients stored as rank-c factors
(`document_rank`), with the Pearson they lose and how much smaller the store is; and at k = 16,
how much of each query's exact top 10 two-stage retrieval recovers from 20 stored candidates, and
what storing the projected gradients in bfloat16 (`stored_gradient_dtype`) changes. Output: a log,
then one `name: value` line per figure.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from pretrace.batching import batches  # noqa: E402
from pretrace.documents import compute_document_gradients  # noqa: E402
from pretrace.ekfac import fit_factors  # noqa: E402
from pretrace.model import wrap_model  # noqa: E402
from pretrace.projection import KroneckerProjection  # noqa: E402
from pretrace.queries import Query, compute_query_gradients  # noqa: E402
from pretrace.retrieval import recall  # noqa: E402
from pretrace.scores import score_matrix, stream_scores  # noqa: E402
from tests.peer import pearson  # noqa: E402
from tests.tiny import sentence_documents, tiny_tokenizer, trained_tiny_llama  # noqa: E402

QUERIES = [
    Query("capital", "The capital of France is", " Paris."),
    Query("slope", "The slope between (1, 2) and (3, 8) is", " (8 - 2) / (3 - 1) = 3."),
    Query("arith", "(7 - 4) * 8 =", " 3 * 8 = 24"),
    Query("code", "def add(a, b):", "\n    return a + b\n"),
]
TRAINED_K = 16
"""The k of `projected_pearson_trained`: 8x compression of the tiny model's 64 x 32 layers."""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ks", type=int, nargs="+", default=[8, 16, 32], help="projection sizes k (k_out = k_in = k)")
    p.add_argument("--seeds", type=int, default=10, help="projection seeds per (basis, k)")
    p.add_argument("--ranks", type=int, nargs="+", default=[2, 3, 4],
                   help="document ranks c of the factored store, at the largest k")
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def trained_setup():
    """(wrapped trained tiny Llama, its documents, EK-FAC factors fitted on them)."""
    tokenizer = tiny_tokenizer()
    documents = sentence_documents(tokenizer)
    lm = wrap_model(trained_tiny_llama(tokenizer, documents), tokenizer, device="cpu")
    return lm, documents, fit_factors(lm, lambda: (b for _, b in batches(documents, 8, 0)))


def projected_correlations(lm, documents, factors, exact: torch.Tensor, k: int, basis: str, seed: int,
                           document_rank: int | None = None) -> list[float]:
    """Per query, Pearson of the scores through a (k, k) projection (document gradients kept at
    ``document_rank``) against ``exact``."""
    approx = projected_scores(lm, documents, factors, k, basis, seed, document_rank)
    return [pearson(approx[i], exact[i]) for i in range(len(QUERIES))]


def projected_scores(lm, documents, factors, k: int, basis: str, seed: int,
                     document_rank: int | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """(queries, documents) scores through a (k, k) projection, documents kept at ``document_rank``
    and stored in ``dtype`` (streamed, not stored, when neither is given)."""
    projection = KroneckerProjection.build(lm.layer_shapes(), k, k, seed=seed, basis=basis, factors=factors)
    queries = compute_query_gradients(lm, factors, QUERIES, projection=projection)
    if document_rank is None and dtype is None:
        approx = stream_scores(lm, queries, documents, projection=projection)
    else:
        stored = compute_document_gradients(lm, documents, [str(i) for i in range(len(documents))],
                                            projection=projection, rank=document_rank, dtype=dtype)
        approx = score_matrix(queries, stored)
    return approx


def compression(shapes: dict[str, tuple[int, int]], k: int) -> float:
    """Dense per-document gradient size over its stored size at (k, k)."""
    return sum(o * i for o, i in shapes.values()) / sum(min(k, o) * min(k, i) for o, i in shapes.values())


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    lm, documents, factors = trained_setup()
    exact = stream_scores(lm, compute_query_gradients(lm, factors, QUERIES), documents)
    shapes = lm.layer_shapes()
    print(f"# projection accuracy on the tests' trained tiny Llama: {len(documents)} documents, {len(QUERIES)} "
          f"queries, layers {sorted(set(shapes.values()))}, seeds 0-{args.seeds - 1}", flush=True)
    figures: dict[str, float] = {}
    for k in args.ks:
        figures[f"compression_k{k}"] = compression(shapes, k)
        for basis in ("raw", "whitened"):
            approx = [projected_scores(lm, documents, factors, k, basis, seed) for seed in range(args.seeds)]
            if (k, basis) == (TRAINED_K, "whitened"):  # two-stage retrieval: the exact top 10 among the stored top 20
                figures["rerank_recall_at_10_trained"] = statistics.mean(recall(a, exact, 20, 10) for a in approx)
            values = [pearson(a[i], exact[i]) for a in approx for i in range(len(QUERIES))]
            figures[f"pearson_{basis}_k{k}_mean"] = statistics.mean(values)
            figures[f"pearson_{basis}_k{k}_min"] = min(values)
            print(f"k={k} {basis}: mean {statistics.mean(values):.3f}, min {min(values):.3f} "
                  f"over {len(values)} (seed, query) pairs; compression {figures[f'compression_k{k}']:.1f}", flush=True)
    if TRAINED_K in args.ks:
        figures["projected_pearson_trained"] = figures[f"pearson_whitened_k{TRAINED_K}_mean"]
        print(f"k={TRAINED_K} whitened, two-stage retrieval: {figures['rerank_recall_at_10_trained']:.3f} of each "
              "exact top 10 among the stored top 20 (re-scored exactly)", flush=True)
    if TRAINED_K in args.ks:  # the same projected store in bfloat16 (`stored_gradient_dtype`) against float32
        stores = {dtype: [projected_scores(lm, documents, factors, TRAINED_K, "whitened", seed, dtype=dtype)
                          for seed in range(args.seeds)] for dtype in (torch.float32, torch.bfloat16)}
        pairs = list(zip(stores[torch.float32], stores[torch.bfloat16]))
        figures["bf16_store_pearson_vs_float32"] = min(pearson(h[i], f[i]) for f, h in pairs for i in range(len(QUERIES)))
        figures["bf16_store_pearson_loss"] = figures["projected_pearson_trained"] - statistics.mean(
            pearson(h[i], exact[i]) for _, h in pairs for i in range(len(QUERIES)))
        print(f"k={TRAINED_K} whitened, stored in bfloat16: half the bytes; lowest per-query Pearson against the float32 "
              f"store {figures['bf16_store_pearson_vs_float32']:.6f}", flush=True)
    k = max(args.ks)  # factored storage: each document's whitened (k, k) gradient kept at rank c
    for c in args.ranks:
        values = [r for seed in range(args.seeds)
                  for r in projected_correlations(lm, documents, factors, exact, k, "whitened", seed, c)]
        figures[f"factored_storage_ratio_k{k}_c{c}"] = k * k / (c * 2 * k)
        figures[f"factored_pearson_loss_k{k}_c{c}"] = figures[f"pearson_whitened_k{k}_mean"] - statistics.mean(values)
        print(f"k={k} whitened, document_rank {c}: mean {statistics.mean(values):.3f}, min {min(values):.3f}; "
              f"{figures[f'factored_storage_ratio_k{k}_c{c}']:.2f}x smaller than the projected store", flush=True)
    print(f"# {time.perf_counter() - started:.0f} s")
    for name, value in figures.items():
        print(f"{name}: {value:.4g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
