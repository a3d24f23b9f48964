"""Influence benchmark: pretrace's paths against a plain forward+backward measured in the same run.

    python -m bench.influence            # the default shape (6-10 minutes on a shared 2-core CPU)
    python -m bench.influence --quick    # a tiny smoke run (~20 s, mostly imports)

Every figure is a ratio of two times measured in this run, on this machine, with the same
number of threads, so it does not depend on how fast the machine is. The baseline is one
training-style pass over the documents: forward with Hugging Face's own `labels=` loss (mean
next-token cross-entropy), loss.backward() into parameter gradients, no optimizer, at the same
batch size as the path it is compared with. bench/README.md describes every figure.

The model is a randomly initialised Llama built here from a LlamaConfig (no download); the
documents and queries are random token ids drawn from a Zipf distribution over the vocabulary
(a rough imitation of natural token frequencies). Random weights and random text are enough for
timings; the projection-accuracy figure on them is a statement about this synthetic setup only.

Output: a human-readable log, a markdown table for the README, then one `name: value` line
per figure (the machine-readable part; tests/bench/test_bench_smoke.py parses it).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import get_args

import torch
from safetensors.torch import load_file, save_file

from bench.memory import hwm_bytes as _hwm_bytes
from bench.projection import DEMO, QUERIES, demo_setup, store_accuracy, trained_setup
from bench.synthetic import build_model, make_data
from pretrace.analyses.correlation import pearson
from pretrace.config import StoredGradientDtype
from pretrace.influence.capture import capture
from pretrace.influence.document_gradients import DocumentGradients, compute_document_gradients
from pretrace.influence.ekfac import Factors, fit_factors
from pretrace.influence.projection import BASES, KroneckerProjection
from pretrace.influence.query_gradients import compute_query_gradients, query_gradients_from_tokens
from pretrace.influence.reranking import recall
from pretrace.influence.scores import score_matrix, stream_scores
from pretrace.inputs.batching import batches
from pretrace.model.adapter import wrap_model
from pretrace.testing.kronfluence_peer import Sequences, collate_fn, summed_task

ROOT = Path(__file__).resolve().parents[1]

BERGSON_FIGURES = [
    "bergson_vs_pretrace_factors",
    "bergson_vs_pretrace_pairwise",
    "bergson_vs_pretrace_new_queries",
    "bergson_pearson",
    "bergson_projected_pearson",
]
"""bench/bergson_peer.py's figures, printed here from the same run (nan without bergson)."""
FIGURES = [
    "score_vs_fwdbwd",
    "kronfluence_vs_pretrace",
    "kronfluence_default_vs_pretrace",
    "factors_vs_fwdbwd",
    "kronfluence_factors_vs_fwdbwd",
    "new_queries_vs_fwdbwd",
    "query_pass_vs_fwdbwd",
    "projected_pearson",
    "projected_pearson_min",
    "projected_pearson_raw",
    "projected_pearson_whitened",
    "projection_compression",
    "projected_pearson_trained",
    "projected_pearson_trained_min",
    "rerank_recall_at_100_trained",
    "rerank_recall_at_10_trained",
    "factored_storage_ratio",
    "factored_pearson_loss",
    "rerank_recall_at_100",
    "rerank_recall_at_10",
    *BERGSON_FIGURES,
    "peak_mem_mb",
    "peak_mem_growth_2x",
    "fwdbwd_peak_mem_mb",
]
CONTEXT_BASES = ("raw", "whitened")
"""Projection bases whose Pearson at the same size is printed beside the chosen one's."""
TARGETS = {
    "score_vs_fwdbwd": "<= 1.3",
    "kronfluence_vs_pretrace": ">= 3",
    "factors_vs_fwdbwd": "<= 3.5",
    "new_queries_vs_fwdbwd": "<= 0.05",
    "projection_compression": ">= 64",
    "projected_pearson_trained": ">= 0.95",
    "factored_storage_ratio": ">= 5",
    "factored_pearson_loss": "<= 0.02",
    "bergson_pearson": ">= 0.9999",
    "rerank_recall_at_100": ">= 0.95",
    "peak_mem_growth_2x": "~ 1",
}


# ----------------------------------------------------------------------------- setup


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--docs", type=int, default=256, help="documents scored (default 256)")
    p.add_argument("--doc-len", type=int, default=128, help="tokens per document (default 128)")
    p.add_argument("--queries", type=int, default=128, help="queries (default 128)")
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--completion-len", type=int, default=16)
    p.add_argument("--vocab", type=int, default=32000, help="vocabulary size (default 32000, Llama-2's)")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--intermediate", type=int, default=512)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument(
        "--projection",
        type=int,
        nargs=2,
        default=list(DEMO.projection),
        metavar=("K_OUT", "K_IN"),
        help="Kronecker projection of stored document gradients, per layer (default: the demo's, "
        f"{DEMO.projection[0]} {DEMO.projection[1]})",
    )
    p.add_argument(
        "--stored-dtype",
        choices=get_args(StoredGradientDtype),
        default=DEMO.stored_gradient_dtype,
        help=f"stored_gradient_dtype of that store (default: the demo's, {DEMO.stored_gradient_dtype})",
    )
    p.add_argument(
        "--document-rank",
        type=int,
        default=DEMO.document_rank,
        help=f"document_rank of that store (default: the demo's, {DEMO.document_rank}); 0: dense",
    )
    p.add_argument(
        "--projection-basis",
        choices=BASES,
        default="principal",
        help="basis of that projection (default principal, pretrace's default)",
    )
    p.add_argument(
        "--fisher",
        choices=["sampled", "empirical"],
        default="empirical",
        help="labels for factor fitting, on both sides (default empirical)",
    )
    p.add_argument("--repeats", type=int, default=3, help="timed repetitions per figure; the median is reported")
    p.add_argument(
        "--slow-repeats", type=int, default=1, help="timed repetitions of factor fitting and of kronfluence (default 1)"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads for every timing (default 1: on a shared machine more threads "
        "oversubscribe the cores and timings become erratic)",
    )
    p.add_argument("--no-kronfluence", action="store_true", help="skip the kronfluence figures (printed as nan)")
    p.add_argument("--no-bergson", action="store_true", help="skip the bergson figures (printed as nan)")
    p.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses (printed as nan)")
    p.add_argument(
        "--no-trained",
        action="store_true",
        help="skip the accuracy figures on the demo's trained model (printed as nan; they take ~8 minutes)",
    )
    p.add_argument(
        "--trained-documents",
        type=int,
        default=512,
        help="documents of the demo's corpus (a seeded sample) scored for those figures (default 512)",
    )
    p.add_argument("--quick", action="store_true", help="a tiny run for smoke tests")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--memory-child", nargs=3, metavar=("DIR", "MODE", "N_DOCS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.document_rank = args.document_rank or None
    if args.quick:
        args.docs, args.doc_len, args.queries = 16, 24, 8
        args.prompt_len, args.completion_len = 8, 4
        args.vocab, args.hidden, args.intermediate, args.layers, args.heads = 512, 32, 64, 2, 4
        args.batch_size, args.projection, args.repeats, args.slow_repeats = 4, [8, 8], 1, 1
        args.document_rank = 2
    return args


# ----------------------------------------------------------------------------- timing


def median_time(fn: Callable[[], object], repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(max(1, repeats)):
        gc.collect()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def fwdbwd(model, sequences, batch_size, pad_id=0) -> None:
    """The baseline: a training step without the optimizer. Forward with Hugging Face's own
    causal-LM loss (`labels=`, mean next-token cross-entropy), then loss.backward() into the
    parameters' .grad."""
    model.requires_grad_(True)
    for _, batch in batches(sequences, batch_size, pad_id):
        labels = batch.input_ids.masked_fill(batch.attention_mask == 0, -100)
        loss = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=labels).loss
        loss.backward()
    model.zero_grad(set_to_none=True)


def fmt_times(times: list[float]) -> str:
    return "[" + ", ".join(f"{t:.2f}" for t in times) + "] s"


# ----------------------------------------------------------------------------- kronfluence


def kronfluence_runner(lm, args, docs, queries, starts, output_dir: str):
    """An Analyzer set up exactly like pretrace: same layers, labels, damping and summed losses."""
    logging.getLogger("kronfluence").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning, module="kronfluence")
    import copy

    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from kronfluence.utils.dataset import DataLoaderKwargs

    task = summed_task([layer.name for layer in lm.layers], sampled_labels=args.fisher == "sampled")
    model = prepare_model(copy.deepcopy(lm.model), task)
    analyzer = Analyzer("bench", model, task, cpu=True, disable_tqdm=True, output_dir=output_dir)
    analyzer.set_dataloader_kwargs(DataLoaderKwargs(collate_fn=collate_fn(0)))
    factor_args = FactorArguments(
        strategy="ekfac",
        use_empirical_fisher=args.fisher == "empirical",
        covariance_max_examples=None,
        lambda_max_examples=None,
    )
    # One pass over the documents for all queries, as pretrace does: accumulate every query batch.
    one_pass = ScoreArguments(
        damping_factor=None, query_gradient_accumulation_steps=math.ceil(len(queries) / args.batch_size)
    )
    default = ScoreArguments(damping_factor=None)  # kronfluence's default: one pass per query batch

    def fit(n_docs=None):
        analyzer.fit_all_factors(
            "ekfac",
            Sequences(docs[:n_docs]),
            per_device_batch_size=args.batch_size,
            factor_args=factor_args,
            overwrite_output_dir=True,
        )

    def score(n_queries=None, n_docs=None, accumulate=True):
        q, s = queries[:n_queries], starts[:n_queries]
        analyzer.compute_pairwise_scores(
            "pairwise",
            "ekfac",
            Sequences(q, s),
            Sequences(docs[:n_docs]),
            per_device_query_batch_size=args.batch_size,
            per_device_train_batch_size=args.batch_size,
            score_args=one_pass if accumulate else default,
            overwrite_output_dir=True,
        )
        return analyzer.load_pairwise_scores("pairwise")["all_modules"]

    return fit, score


# ----------------------------------------------------------------------------- memory


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_child(args) -> None:
    """In a fresh process: one measured operation over N documents, then its memory as JSON.

    "score": stream_scores of every query against the N documents (query gradients are computed
    first, in this process, from factors the parent saved). "fwdbwd": the baseline training
    step over the N documents. Reported: VmHWM (the process's RSS high-water mark, which the
    kernel keeps exactly), VmHWM and RSS just before the operation, and the RSS peak sampled
    every 2 ms during it.
    """
    directory, mode, n_docs = args.memory_child[0], args.memory_child[1], int(args.memory_child[2])
    torch.set_num_threads(args.threads)
    lm = wrap_model(build_model(args), None, layers=["mlp"], device="cpu")
    docs, queries, starts = make_data(args, n_docs)
    if mode == "score":
        tensors = load_file(os.path.join(directory, "factors.safetensors"))
        with open(os.path.join(directory, "factors.json")) as f:
            factors = Factors.from_tensors(tensors, json.load(f))
        qg = query_gradients_from_tokens(
            lm, factors, queries, starts, [str(i) for i in range(len(queries))], batch_size=args.batch_size
        )
        del tensors, factors

        def operation():
            return stream_scores(lm, qg, docs, batch_size=args.batch_size)
    else:

        def operation():
            return fwdbwd(lm.model, docs, args.batch_size)

    gc.collect()
    before, hwm_before = _rss_bytes(), _hwm_bytes()
    peak = [before]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    operation()
    done.set()
    sampler.join()
    print(
        json.dumps(
            {
                "hwm": _hwm_bytes(),
                "hwm_before": hwm_before,
                "before": before,
                "sampled_peak": max(peak[0], _rss_bytes()),
            }
        )
    )


def memory_children(args, directory: str, jobs: list[tuple[str, int]]) -> list[dict]:
    """Run the measurements one after another: run together on the 2-core VM, the stream_scores
    children's peak RSS differed by 20% between 256 and 512 documents where, run alone, they are
    equal (bench/README.md), which hid whether memory stays flat as documents double."""
    results = []
    for mode, n_docs in jobs:
        cmd = [sys.executable, "-m", __spec__.name, "--memory-child", directory, mode, str(n_docs)]
        done = subprocess.run(cmd + shape_flags(args), capture_output=True, text=True, cwd=str(ROOT))
        if done.returncode != 0:
            raise RuntimeError(f"memory subprocess failed:\n{done.stderr[-3000:]}")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return results


TRAINED_FIGURES = [
    "projected_pearson_trained",
    "projected_pearson_trained_min",
    "rerank_recall_at_100_trained",
    "rerank_recall_at_10_trained",
    "factored_storage_ratio",
    "factored_pearson_loss",
]


def stored_bytes(stored: DocumentGradients) -> int:
    """The bytes a store's gradients take in its file (int4 codes packed; scales and factors included)."""
    tensors, _ = stored.to_tensors()
    return sum(t.nbytes for name, t in tensors.items() if name != "losses")


def trained_model(args) -> str:
    """What the trained-model figures are measured on, for the log and the table."""
    return (
        "the tests' briefly trained tiny Llama (64 x 32 layers), its documents and queries"
        if args.quick
        else f"the demo's model trained as `pretrace demo` trains it ({DEMO.demo_steps} steps), {args.trained_documents} "
        "of its corpus's documents and its 76 queries"
    )


def trained_figures(args, log) -> dict[str, float]:
    """`store_accuracy` of the benchmark's store (--projection, --stored-dtype) on a trained model:
    the demo's (the tests' tiny one with --quick), on every core: nothing here is timed."""
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    try:
        if args.quick:
            (lm, documents, factors), queries = trained_setup(), QUERIES
        else:
            with tempfile.TemporaryDirectory(prefix="bench-trained-") as tmp:
                lm, queries, documents, factors, _ = demo_setup(Path(tmp), args.trained_documents, DEMO.demo_steps)
        exact = stream_scores(lm, compute_query_gradients(lm, factors, queries), documents)
        accuracy = store_accuracy(
            lm, queries, documents, factors, exact, args.projection[0], args.stored_dtype, args.document_rank
        )
        dense = (
            accuracy
            if args.document_rank is None
            else store_accuracy(lm, queries, documents, factors, exact, args.projection[0], args.stored_dtype)
        )
    finally:
        torch.set_num_threads(threads)
    log(
        f"on {trained_model(args)}: the {store_name(args)} store's scores against exact ones: mean per-query "
        f"Pearson {accuracy['pearson_mean']:.3f} (min {accuracy['pearson_min']:.3f}; {dense['pearson_mean']:.3f} "
        f"dense); two-stage recall of the exact top 100 {accuracy['rerank_recall_at_100']:.3f}"
    )
    return {
        "projected_pearson_trained": accuracy["pearson_mean"],
        "projected_pearson_trained_min": accuracy["pearson_min"],
        "rerank_recall_at_100_trained": accuracy["rerank_recall_at_100"],
        "rerank_recall_at_10_trained": accuracy["rerank_recall_at_10"],
        "factored_storage_ratio": accuracy["compression"] / dense["compression"],
        "factored_pearson_loss": dense["pearson_mean"] - accuracy["pearson_mean"],
    }


def store_name(args) -> str:
    """The benchmark's store in words: projection, dtype and document rank."""
    rank = "" if args.document_rank is None else f" rank-{args.document_rank}"
    return f"{args.projection[0]}x{args.projection[1]} {args.stored_dtype}{rank}"


def shape_flags(args) -> list[str]:
    """The shape flags, so a child process rebuilds the same model and data."""
    return [
        "--doc-len",
        str(args.doc_len),
        "--queries",
        str(args.queries),
        "--prompt-len",
        str(args.prompt_len),
        "--completion-len",
        str(args.completion_len),
        "--vocab",
        str(args.vocab),
        "--hidden",
        str(args.hidden),
        "--intermediate",
        str(args.intermediate),
        "--layers",
        str(args.layers),
        "--heads",
        str(args.heads),
        "--batch-size",
        str(args.batch_size),
        "--threads",
        str(args.threads),
        "--seed",
        str(args.seed),
    ]


# ----------------------------------------------------------------------------- main


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.memory_child:
        memory_child(args)
        return 0
    torch.set_num_threads(args.threads)
    wall = time.perf_counter()

    def log(*parts):
        print(f"[{time.perf_counter() - wall:5.0f}s]", *parts, flush=True)

    model = build_model(args)
    lm = wrap_model(model, None, layers=["mlp"], device="cpu")
    docs, queries, starts = make_data(args)
    qids = [str(i) for i in range(len(queries))]
    n_params = sum(p.numel() for p in model.parameters())
    tracked = sum(layer.d_in * layer.d_out for layer in lm.layers)
    B, R, R_slow = args.batch_size, args.repeats, args.slow_repeats
    log(f"# pretrace influence benchmark ({'quick' if args.quick else 'default'} shape)")
    log(
        f"model: random Llama, {args.layers} layers, hidden {args.hidden}, MLP {args.intermediate}, "
        f"{args.heads} heads, vocab {args.vocab} ({n_params / 1e6:.1f}M parameters; {len(lm.layers)} tracked "
        f"MLP linears, {tracked / 1e6:.2f}M tracked weights), float32"
    )
    log(
        f"data: {args.docs} documents x {args.doc_len} tokens, {args.queries} queries x "
        f"({args.prompt_len} prompt + {args.completion_len} completion) tokens; random Zipf token ids"
    )
    log(
        f"batch size {B}, torch threads {args.threads}, {args.fisher} Fisher, median of {R} runs "
        f"({R_slow} for factor fitting and kronfluence), projection {args.projection[0]}x{args.projection[1]} "
        "per layer for stored document gradients"
    )
    log(
        "the baseline (fwdbwd) is a training step without the optimizer over all the documents: forward with "
        "Hugging Face's labels= loss, loss.backward() into parameter .grad"
    )

    def batches_fn():
        return (b for _, b in batches(docs, B, lm.pad_token_id))

    results: dict[str, float] = {}

    # Warm-up: every path once on a small slice (allocator, kernels, lazy imports).
    few = docs[: 2 * B]
    fwdbwd(model, few, B)
    warm_factors = fit_factors(lm, lambda: (b for _, b in batches(few, B, 0)), fisher=args.fisher)
    warm_q = query_gradients_from_tokens(lm, warm_factors, queries[:B], starts[:B], qids[:B], batch_size=B)
    stream_scores(lm, warm_q, few, batch_size=B)

    base, times = median_time(lambda: fwdbwd(model, docs, B), R)
    log(f"baseline fwdbwd over the documents: {base:.2f} s median {fmt_times(times)}")

    factors = None

    def fit():
        nonlocal factors
        factors = fit_factors(lm, batches_fn, fisher=args.fisher)

    t_factors, times = median_time(fit, R_slow)
    results["factors_vs_fwdbwd"] = t_factors / base
    log(
        f"pretrace fit_factors (covariance pass, eigh, eigenvalue-correction pass): {t_factors:.2f} s {fmt_times(times)}"
    )

    qg_exact = None

    def exact_queries():
        nonlocal qg_exact
        qg_exact = query_gradients_from_tokens(lm, factors, queries, starts, qids, batch_size=B)

    t_qexact, times = median_time(exact_queries, R)
    log(f"pretrace exact query gradients ({args.queries} queries): {t_qexact:.2f} s {fmt_times(times)}")
    exact = None

    def stream():
        nonlocal exact
        exact = stream_scores(lm, qg_exact, docs, batch_size=B)

    t_stream, times = median_time(stream, R)
    results["score_vs_fwdbwd"] = t_stream / base
    log(
        f"pretrace stream_scores ({args.queries} x {args.docs}, exact, query gradients precomputed): "
        f"{t_stream:.2f} s {fmt_times(times)}"
    )

    # New queries against stored projected document gradients (computed here, not timed).
    proj = KroneckerProjection.build(
        lm.layer_shapes(), *args.projection, seed=args.seed, basis=args.projection_basis, factors=factors
    )
    doc_ids = [str(i) for i in range(len(docs))]
    stored = compute_document_gradients(
        lm, docs, doc_ids, projection=proj, batch_size=B, rank=args.document_rank, stored_dtype=args.stored_dtype
    )
    projected = None

    projected_queries = None

    def new_queries():
        nonlocal projected, projected_queries
        projected_queries = query_gradients_from_tokens(
            lm, factors, queries, starts, qids, projection=proj, batch_size=B
        )
        projected = score_matrix(projected_queries, stored)

    t_new, times = median_time(new_queries, R)
    results["new_queries_vs_fwdbwd"] = t_new / base

    def query_pass():  # what a new query costs at least: its own forward and backward pass, captured
        for _, batch in batches(queries, B, lm.pad_token_id, first_target=starts):
            capture(lm, batch, "data")

    t_pass, pass_times = median_time(query_pass, R)
    results["query_pass_vs_fwdbwd"] = t_pass / base
    stored_mb = stored_bytes(stored) / 2**20
    log(
        f"pretrace new queries (projected query gradients + score_matrix against {stored_mb:.1f} MiB of stored "
        f"{store_name(args)} document gradients): {t_new:.2f} s {fmt_times(times)}; of which at least the queries' own forward and "
        f"backward pass: {t_pass:.2f} s {fmt_times(pass_times)}"
    )
    correlations = [pearson(projected[i], exact[i]) for i in range(len(queries))]
    results["projected_pearson"] = statistics.mean(correlations)
    results["projected_pearson_min"] = min(correlations)
    results["projection_compression"] = tracked * 4 * len(docs) / stored_bytes(stored)
    # Context: the other bases at the same size, untimed.
    for basis in CONTEXT_BASES:
        if basis == args.projection_basis:
            results[f"projected_pearson_{basis}"] = results["projected_pearson"]
            continue
        other = KroneckerProjection.build(
            lm.layer_shapes(), *args.projection, seed=args.seed, basis=basis, factors=factors
        )
        other_scores = score_matrix(
            query_gradients_from_tokens(lm, factors, queries, starts, qids, projection=other, batch_size=B),
            compute_document_gradients(
                lm,
                docs,
                doc_ids,
                projection=other,
                batch_size=B,
                rank=args.document_rank,
                stored_dtype=args.stored_dtype,
            ),
        )
        results[f"projected_pearson_{basis}"] = statistics.mean(
            pearson(other_scores[i], exact[i]) for i in range(len(queries))
        )
    # Two-stage retrieval: the stored scores' top 2t candidates, re-scored exactly, against the exact top t.
    for top in (100, 10):
        results[f"rerank_recall_at_{top}"] = recall(projected, exact, min(2 * top, len(docs)), min(top, len(docs)))
    log(
        f"projected scores against exact ones: mean per-query Pearson {results['projected_pearson']:.3f} "
        f"({args.projection_basis}), "
        + ", ".join(f"{results[f'projected_pearson_{b}']:.3f} ({b})" for b in CONTEXT_BASES)
        + "; "
        f"{results['projection_compression']:.0f}x smaller than dense gradients"
    )

    # kronfluence on the same work.
    nan = float("nan")
    results["kronfluence_vs_pretrace"] = results["kronfluence_factors_vs_fwdbwd"] = nan
    results["kronfluence_default_vs_pretrace"] = nan
    try:
        import kronfluence  # noqa: F401
    except ImportError:
        log("kronfluence is not installed: its figures are nan")
        args.no_kronfluence = True
    if not args.no_kronfluence:
        with tempfile.TemporaryDirectory(prefix="bench-kronfluence-") as out:
            kfit, kscore = kronfluence_runner(lm, args, docs, queries, starts, out)
            if not args.quick:  # warm-up
                kfit(n_docs=2 * B)
                kscore(n_queries=B, n_docs=B)
            t_kfit, times = median_time(kfit, R_slow)  # the last fit is the one scored with
            log(f"kronfluence fit_all_factors: {t_kfit:.2f} s {fmt_times(times)}")
            theirs = None

            def kron_scores():
                nonlocal theirs
                theirs = kscore()

            t_kscore, times = median_time(kron_scores, R_slow)
            log(
                f"kronfluence compute_pairwise_scores (its query gradients included; all query batches "
                f"accumulated, so one pass over the documents like pretrace): {t_kscore:.2f} s {fmt_times(times)}"
            )
            # Context: kronfluence's default ScoreArguments go over the documents once per query
            # batch; measured on a slice of the documents (both sides) to keep the run short.
            n_sub = min(len(docs), max(B, len(docs) // 16))
            t_kdefault, times = median_time(lambda: kscore(n_docs=n_sub, accumulate=False), R_slow)
            log(
                f"kronfluence compute_pairwise_scores with default ScoreArguments ({math.ceil(len(queries) / B)} "
                f"passes over the documents), on the first {n_sub} documents: {t_kdefault:.2f} s {fmt_times(times)}"
            )
        sub = docs[:n_sub]
        t_sub, times = median_time(
            lambda: stream_scores(
                lm, query_gradients_from_tokens(lm, factors, queries, starts, qids, batch_size=B), sub, batch_size=B
            ),
            R_slow,
        )
        log(
            f"  pretrace on those {n_sub} documents (exact query gradients + stream_scores): {t_sub:.2f} s {fmt_times(times)}"
        )
        results["kronfluence_default_vs_pretrace"] = t_kdefault / t_sub
        ours = t_qexact + t_stream
        results["kronfluence_vs_pretrace"] = t_kscore / ours
        results["kronfluence_factors_vs_fwdbwd"] = t_kfit / base
        agree = [pearson(theirs[i], exact[i]) for i in range(len(queries))]
        rel = float((theirs - exact).norm() / exact.norm())
        log(
            f"  pretrace on the same work (exact query gradients + stream_scores): {ours:.2f} s; kronfluence's "
            f"scores against pretrace's: min per-query Pearson {min(agree):.6f}, relative error {rel:.1e}"
        )

    # bergson on the same work, against pretrace's times of this run.
    if args.no_bergson:
        results |= dict.fromkeys(BERGSON_FIGURES, nan)
    else:
        from bench.bergson_peer import bergson_figures

        results |= bergson_figures(
            lm,
            args,
            docs,
            queries,
            starts,
            exact,
            {"factors": t_factors, "pairwise": t_qexact + t_stream, "new_queries": t_new},
            log,
        )

    # Memory: each measurement in its own fresh process.
    results["peak_mem_mb"] = results["peak_mem_growth_2x"] = results["fwdbwd_peak_mem_mb"] = nan
    if not args.no_memory:
        with tempfile.TemporaryDirectory(prefix="bench-memory-") as directory:
            tensors, metadata = factors.to_tensors()
            save_file(tensors, os.path.join(directory, "factors.safetensors"))
            with open(os.path.join(directory, "factors.json"), "w") as f:
                json.dump(metadata, f)
            jobs = [("score", args.docs), ("score", 2 * args.docs), ("fwdbwd", args.docs)]
            one, two, base_mem = memory_children(args, directory, jobs)

        def mb(v):
            return v / 2**20

        results["peak_mem_mb"] = mb(one["hwm"])
        results["peak_mem_growth_2x"] = two["hwm"] / one["hwm"]
        results["fwdbwd_peak_mem_mb"] = mb(base_mem["hwm"])
        qg_mb = tracked * args.queries * 4 / 2**20
        for (mode, n), m in zip(jobs, (one, two, base_mem)):
            what = "stream_scores" if mode == "score" else "baseline fwdbwd"
            log(
                f"memory, {what} over {n} documents (fresh process): peak RSS (VmHWM) {mb(m['hwm']):.0f} MiB "
                f"({mb(m['hwm_before']):.0f} before the operation); RSS before {mb(m['before']):.0f} MiB, "
                f"sampled peak during {mb(m['sampled_peak']):.0f} MiB"
            )
        log(f"  (the exact query gradients held while scoring are {qg_mb:.0f} MiB)")

    # Accuracy on a trained model (a random one's scores have no structure), untimed.
    results |= dict.fromkeys(TRAINED_FIGURES, nan)
    if not args.no_trained and args.projection[0] == args.projection[1]:
        results |= trained_figures(args, log)

    total = time.perf_counter() - wall
    log(f"baseline fwdbwd {base:.2f} s on this machine; whole benchmark {total:.0f} s\n")
    from bench.bergson_peer import peer_projection  # here: bergson_peer imports this module

    peer_k = peer_projection(lm, args)

    describe = {
        "score_vs_fwdbwd": f"stream_scores, {args.queries} queries x {args.docs} docs, exact, query gradients "
        "precomputed / fwdbwd",
        "kronfluence_vs_pretrace": "kronfluence compute_pairwise_scores / pretrace exact query gradients + "
        "stream_scores (same factors, queries, documents, batch size)",
        "kronfluence_default_vs_pretrace": "the same with kronfluence's default ScoreArguments (one pass over the "
        "documents per query batch), on a slice of the documents (context)",
        "factors_vs_fwdbwd": f"pretrace fit_factors ({args.fisher} Fisher: two passes + eigh) / fwdbwd",
        "kronfluence_factors_vs_fwdbwd": "kronfluence fit_all_factors, same settings / fwdbwd (context)",
        "new_queries_vs_fwdbwd": f"{args.queries} new queries (their gradients counted) scored against the stored "
        f"{store_name(args)} ({args.projection_basis}) document gradients / fwdbwd",
        "query_pass_vs_fwdbwd": "the new queries' own forward and backward pass alone (tracked layers captured; "
        "no preconditioning, projection or scoring) / fwdbwd: the floor under new_queries",
        "projected_pearson": "mean per-query Pearson of those projected scores against exact scores",
        "projected_pearson_min": "min per-query Pearson, projected against exact",
        "projected_pearson_raw": "mean per-query Pearson with a raw (unwhitened) projection of the same size (context)",
        "projected_pearson_whitened": "the same with a whitened projection (seeded Gaussian in the eigenbasis; "
        "context)",
        "projection_compression": f"dense float32 per-document gradient bytes / the {store_name(args)} store's bytes "
        "(4-bit codes packed, scales included)",
        "projected_pearson_trained": f"mean per-query Pearson of the same store's scores against exact ones on "
        f"{trained_model(args)}",
        "projected_pearson_trained_min": "min per-query Pearson there",
        "rerank_recall_at_100_trained": "rerank_recall_at_100 there",
        "rerank_recall_at_10_trained": "rerank_recall_at_10 there",
        "factored_storage_ratio": f"there, the same projection stored dense in {args.stored_dtype} / as the store's "
        f"rank-{args.document_rank} factors (`document_rank`; bytes)",
        "factored_pearson_loss": "there, the dense store's mean per-query Pearson minus the factored store's",
        "rerank_recall_at_100": f"share of each query's exact top 100 that two-stage retrieval returns from the stored "
        f"scores' top 200 candidates (of {args.docs} documents), re-scored exactly",
        "rerank_recall_at_10": "the same for the exact top 10 from 20 candidates",
        "bergson_vs_pretrace_factors": "bergson 2.5.1 fit_factored_hessians (EK-FAC, dataset labels) / pretrace fit_factors",
        "bergson_vs_pretrace_pairwise": "bergson query gradients + streaming Scorer over the documents / pretrace exact "
        "query gradients + stream_scores",
        "bergson_vs_pretrace_new_queries": f"bergson: new queries against its {peer_k}x{peer_k} "
        "Rademacher-projected float32 store (no more "
        "bytes than pretrace's) / pretrace new_queries (above)",
        "bergson_pearson": "min per-query Pearson of bergson's pairwise EK-FAC scores against pretrace's exact ones",
        "bergson_projected_pearson": "mean per-query Pearson of bergson's projected new-query scores against exact "
        "(context)",
        "peak_mem_mb": f"peak RSS (VmHWM, MiB) of a fresh process stream-scoring {args.docs} docs (interpreter, "
        "model and query gradients included)",
        "peak_mem_growth_2x": f"the same for {2 * args.docs} docs / for {args.docs} docs",
        "fwdbwd_peak_mem_mb": f"peak RSS (VmHWM, MiB) of a fresh process running fwdbwd over {args.docs} docs "
        "(context)",
    }
    print("| figure | value | target | what it measures |")
    print("|---|---|---|---|")
    for name in FIGURES:
        print(f"| `{name}` | {results[name]:.3g} | {TARGETS.get(name, '')} | {describe[name]} |")
    print()
    for name in FIGURES:
        print(f"{name}: {results[name]:.4g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
