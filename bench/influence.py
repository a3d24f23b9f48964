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

Output: a human-readable log, a markdown table for the docs, then one `name: value` line
per figure (the machine-readable part; tests/bench/test_bench_smoke.py parses it).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
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
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import get_args

import torch
from safetensors.torch import load_file, save_file

from bench.memory import hwm_bytes as _hwm_bytes
from bench.projection import DEMO, QUERIES, demo_setup, store_accuracy, trained_setup
from bench.synthetic import build_model, make_data
from pretrace.analyses.correlation import pearson
from pretrace.config import COMPACT_STORE, StoredGradientDtype
from pretrace.influence.capture import capture
from pretrace.influence.document_gradients import DocumentGradients, compute_document_gradients
from pretrace.influence.ekfac import Factors, fit_factors
from pretrace.influence.projection import BASES, KroneckerProjection
from pretrace.influence.query_gradients import compute_query_gradients, query_gradients_from_tokens
from pretrace.influence.reranking import recall
from pretrace.influence.scores import score_matrix, stream_scores
from pretrace.inputs.batching import batches
from pretrace.model.adapter import LoadedModel, wrap_model
from pretrace.model.threads import torch_threads
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
        default=list(COMPACT_STORE["projection"]),
        metavar=("K_OUT", "K_IN"),
        help="Kronecker projection of stored document gradients, per layer (default: the compact store's, "
        f"{COMPACT_STORE['projection'][0]} {COMPACT_STORE['projection'][1]})",
    )
    p.add_argument(
        "--stored-dtype",
        choices=get_args(StoredGradientDtype),
        default=COMPACT_STORE["stored_gradient_dtype"],
        help=f"stored_gradient_dtype of that store (default: the compact store's, {COMPACT_STORE['stored_gradient_dtype']})",
    )
    p.add_argument(
        "--document-rank",
        type=int,
        default=COMPACT_STORE["document_rank"],
        help=f"document_rank of that store (default: the compact store's, {COMPACT_STORE['document_rank']}); 0: dense",
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
        "of its corpus's documents and its queries"
    )


def trained_figures(args, log) -> dict[str, float]:
    """`store_accuracy` of the benchmark's store (--projection, --stored-dtype) on a trained model:
    the demo's (the tests' tiny one with --quick), on every core: nothing here is timed."""
    with torch_threads(os.cpu_count() or 1):
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


@dataclass
class Run:
    """One benchmark run's model, data and log: what every measurement below works on."""

    args: argparse.Namespace
    model: torch.nn.Module
    lm: LoadedModel
    docs: list[list[int]]
    queries: list[list[int]]
    starts: list[int]
    log: Callable[..., None]

    @property
    def qids(self) -> list[str]:
        return [str(i) for i in range(len(self.queries))]

    @property
    def tracked(self) -> int:
        return sum(layer.d_in * layer.d_out for layer in self.lm.layers)

    def batches(self):
        return (b for _, b in batches(self.docs, self.args.batch_size, self.lm.pad_token_id))

    def query_gradients(self, factors: Factors, projection: KroneckerProjection | None = None):
        B = self.args.batch_size
        return query_gradients_from_tokens(
            self.lm, factors, self.queries, self.starts, self.qids, projection=projection, batch_size=B
        )


@dataclass
class Exact:
    """pretrace's exact path, timed: the baseline, factors, query gradients and streamed scores."""

    base: float
    t_factors: float
    t_queries: float
    t_stream: float
    factors: Factors
    scores: torch.Tensor


def describe_setup(run: Run) -> None:
    args, lm, log = run.args, run.lm, run.log
    n_params = sum(p.numel() for p in run.model.parameters())
    log(f"# pretrace influence benchmark ({'quick' if args.quick else 'default'} shape)")
    log(
        f"model: random Llama, {args.layers} layers, hidden {args.hidden}, MLP {args.intermediate}, "
        f"{args.heads} heads, vocab {args.vocab} ({n_params / 1e6:.1f}M parameters; {len(lm.layers)} tracked "
        f"MLP linears, {run.tracked / 1e6:.2f}M tracked weights), float32"
    )
    log(
        f"data: {args.docs} documents x {args.doc_len} tokens, {args.queries} queries x "
        f"({args.prompt_len} prompt + {args.completion_len} completion) tokens; random Zipf token ids"
    )
    log(
        f"batch size {args.batch_size}, torch threads {args.threads}, {args.fisher} Fisher, median of "
        f"{args.repeats} runs ({args.slow_repeats} for factor fitting and kronfluence), projection "
        f"{args.projection[0]}x{args.projection[1]} per layer for stored document gradients"
    )
    log(
        "the baseline (fwdbwd) is a training step without the optimizer over all the documents: forward with "
        "Hugging Face's labels= loss, loss.backward() into parameter .grad"
    )


def warm_up(run: Run) -> None:
    """Every path once on a small slice (allocator, kernels, lazy imports)."""
    B = run.args.batch_size
    few = run.docs[: 2 * B]
    fwdbwd(run.model, few, B)
    factors = fit_factors(run.lm, lambda: (b for _, b in batches(few, B, 0)), fisher=run.args.fisher)
    warm = query_gradients_from_tokens(run.lm, factors, run.queries[:B], run.starts[:B], run.qids[:B], batch_size=B)
    stream_scores(run.lm, warm, few, batch_size=B)


def exact_path(run: Run, results: dict[str, float]) -> Exact:
    """The baseline and pretrace's exact path: factors, query gradients, streamed scores."""
    args, log, B = run.args, run.log, run.args.batch_size
    base, times = median_time(lambda: fwdbwd(run.model, run.docs, B), args.repeats)
    log(f"baseline fwdbwd over the documents: {base:.2f} s median {fmt_times(times)}")
    factors = queries = scores = None

    def fit():
        nonlocal factors
        factors = fit_factors(run.lm, run.batches, fisher=args.fisher)

    t_factors, times = median_time(fit, args.slow_repeats)
    results["factors_vs_fwdbwd"] = t_factors / base
    log(
        f"pretrace fit_factors (covariance pass, eigh, eigenvalue-correction pass): {t_factors:.2f} s {fmt_times(times)}"
    )

    def exact_queries():
        nonlocal queries
        queries = run.query_gradients(factors)

    t_queries, times = median_time(exact_queries, args.repeats)
    log(f"pretrace exact query gradients ({args.queries} queries): {t_queries:.2f} s {fmt_times(times)}")

    def stream():
        nonlocal scores
        scores = stream_scores(run.lm, queries, run.docs, batch_size=B)

    t_stream, times = median_time(stream, args.repeats)
    results["score_vs_fwdbwd"] = t_stream / base
    log(
        f"pretrace stream_scores ({args.queries} x {args.docs}, exact, query gradients precomputed): "
        f"{t_stream:.2f} s {fmt_times(times)}"
    )
    return Exact(base, t_factors, t_queries, t_stream, factors, scores)


def stored_store(run: Run, projection: KroneckerProjection) -> DocumentGradients:
    args = run.args
    doc_ids = [str(i) for i in range(len(run.docs))]
    return compute_document_gradients(
        run.lm,
        run.docs,
        doc_ids,
        projection=projection,
        batch_size=args.batch_size,
        rank=args.document_rank,
        stored_dtype=args.stored_dtype,
    )


def new_query_figures(run: Run, exact: Exact, results: dict[str, float]) -> float:
    """New queries against stored projected document gradients: their time, the stored scores'
    accuracy against exact ones, the other bases at the same size and two-stage recall. Returns
    the new queries' time."""
    args, lm, log, B = run.args, run.lm, run.log, run.args.batch_size
    build = partial(
        KroneckerProjection.build, lm.layer_shapes(), *args.projection, seed=args.seed, factors=exact.factors
    )
    projection = build(basis=args.projection_basis)
    stored = stored_store(run, projection)  # computed here, not timed
    projected = None

    def new_queries():
        nonlocal projected
        projected = score_matrix(run.query_gradients(exact.factors, projection), stored)

    t_new, times = median_time(new_queries, args.repeats)
    results["new_queries_vs_fwdbwd"] = t_new / exact.base

    def query_pass():  # what a new query costs at least: its own forward and backward pass, captured
        for _, batch in batches(run.queries, B, lm.pad_token_id, first_target=run.starts):
            capture(lm, batch, "data")

    t_pass, pass_times = median_time(query_pass, args.repeats)
    results["query_pass_vs_fwdbwd"] = t_pass / exact.base
    stored_mb = stored_bytes(stored) / 2**20
    log(
        f"pretrace new queries (projected query gradients + score_matrix against {stored_mb:.1f} MiB of stored "
        f"{store_name(args)} document gradients): {t_new:.2f} s {fmt_times(times)}; of which at least the queries' "
        f"own forward and backward pass: {t_pass:.2f} s {fmt_times(pass_times)}"
    )

    def mean_pearson(scores: torch.Tensor) -> float:
        return statistics.mean(pearson(scores[i], exact.scores[i]) for i in range(len(run.queries)))

    correlations = [pearson(projected[i], exact.scores[i]) for i in range(len(run.queries))]
    results["projected_pearson"] = statistics.mean(correlations)
    results["projected_pearson_min"] = min(correlations)
    results["projection_compression"] = run.tracked * 4 * len(run.docs) / stored_bytes(stored)
    for basis in CONTEXT_BASES:  # context: the other bases at the same size, untimed
        if basis == args.projection_basis:
            results[f"projected_pearson_{basis}"] = results["projected_pearson"]
            continue
        other = build(basis=basis)
        results[f"projected_pearson_{basis}"] = mean_pearson(
            score_matrix(run.query_gradients(exact.factors, other), stored_store(run, other))
        )
    # Two-stage retrieval: the stored scores' top 2t candidates, re-scored exactly, against the exact top t.
    n_docs = len(run.docs)
    for top in (100, 10):
        results[f"rerank_recall_at_{top}"] = recall(projected, exact.scores, min(2 * top, n_docs), min(top, n_docs))
    log(
        f"projected scores against exact ones: mean per-query Pearson {results['projected_pearson']:.3f} "
        f"({args.projection_basis}), "
        + ", ".join(f"{results[f'projected_pearson_{b}']:.3f} ({b})" for b in CONTEXT_BASES)
        + "; "
        f"{results['projection_compression']:.0f}x smaller than dense gradients"
    )
    return t_new


def kronfluence_figures(run: Run, exact: Exact, results: dict[str, float]) -> None:
    """kronfluence on the same work: factors, pairwise scores (accumulated and with its defaults)."""
    args, log, docs, B = run.args, run.log, run.docs, run.args.batch_size
    nan = float("nan")
    results["kronfluence_vs_pretrace"] = results["kronfluence_factors_vs_fwdbwd"] = nan
    results["kronfluence_default_vs_pretrace"] = nan
    if args.no_kronfluence:
        return
    if importlib.util.find_spec("kronfluence") is None:
        log("kronfluence is not installed: its figures are nan")
        return
    with tempfile.TemporaryDirectory(prefix="bench-kronfluence-") as out:
        kfit, kscore = kronfluence_runner(run.lm, args, docs, run.queries, run.starts, out)
        if not args.quick:  # warm-up
            kfit(n_docs=2 * B)
            kscore(n_queries=B, n_docs=B)
        t_kfit, times = median_time(kfit, args.slow_repeats)  # the last fit is the one scored with
        log(f"kronfluence fit_all_factors: {t_kfit:.2f} s {fmt_times(times)}")
        theirs = None

        def kron_scores():
            nonlocal theirs
            theirs = kscore()

        t_kscore, times = median_time(kron_scores, args.slow_repeats)
        log(
            f"kronfluence compute_pairwise_scores (its query gradients included; all query batches "
            f"accumulated, so one pass over the documents like pretrace): {t_kscore:.2f} s {fmt_times(times)}"
        )
        # Context: kronfluence's default ScoreArguments go over the documents once per query
        # batch; measured on a slice of the documents (both sides) to keep the run short.
        n_sub = min(len(docs), max(B, len(docs) // 16))
        t_kdefault, times = median_time(lambda: kscore(n_docs=n_sub, accumulate=False), args.slow_repeats)
        log(
            f"kronfluence compute_pairwise_scores with default ScoreArguments ({math.ceil(len(run.queries) / B)} "
            f"passes over the documents), on the first {n_sub} documents: {t_kdefault:.2f} s {fmt_times(times)}"
        )
    sub = docs[:n_sub]
    t_sub, times = median_time(
        lambda: stream_scores(run.lm, run.query_gradients(exact.factors), sub, batch_size=B), args.slow_repeats
    )
    log(
        f"  pretrace on those {n_sub} documents (exact query gradients + stream_scores): {t_sub:.2f} s {fmt_times(times)}"
    )
    results["kronfluence_default_vs_pretrace"] = t_kdefault / t_sub
    ours = exact.t_queries + exact.t_stream
    results["kronfluence_vs_pretrace"] = t_kscore / ours
    results["kronfluence_factors_vs_fwdbwd"] = t_kfit / exact.base
    agree = [pearson(theirs[i], exact.scores[i]) for i in range(len(run.queries))]
    rel = float((theirs - exact.scores).norm() / exact.scores.norm())
    log(
        f"  pretrace on the same work (exact query gradients + stream_scores): {ours:.2f} s; kronfluence's "
        f"scores against pretrace's: min per-query Pearson {min(agree):.6f}, relative error {rel:.1e}"
    )


def memory_figures(run: Run, factors: Factors, results: dict[str, float]) -> None:
    """Peak memory of scoring N and 2N documents and of the baseline, each in a fresh process."""
    args, log = run.args, run.log
    results["peak_mem_mb"] = results["peak_mem_growth_2x"] = results["fwdbwd_peak_mem_mb"] = float("nan")
    if args.no_memory:
        return
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as directory:
        tensors, metadata = factors.to_tensors()
        save_file(tensors, os.path.join(directory, "factors.safetensors"))
        with open(os.path.join(directory, "factors.json"), "w") as f:
            json.dump(metadata, f)
        jobs = [("score", args.docs), ("score", 2 * args.docs), ("fwdbwd", args.docs)]
        one, two, base_mem = memory_children(args, directory, jobs)
    results["peak_mem_mb"] = one["hwm"] / 2**20
    results["peak_mem_growth_2x"] = two["hwm"] / one["hwm"]
    results["fwdbwd_peak_mem_mb"] = base_mem["hwm"] / 2**20
    for (mode, n), m in zip(jobs, (one, two, base_mem)):
        what = "stream_scores" if mode == "score" else "baseline fwdbwd"
        mib = {key: m[key] / 2**20 for key in ("hwm", "hwm_before", "before", "sampled_peak")}
        log(
            f"memory, {what} over {n} documents (fresh process): peak RSS (VmHWM) {mib['hwm']:.0f} MiB "
            f"({mib['hwm_before']:.0f} before the operation); RSS before {mib['before']:.0f} MiB, "
            f"sampled peak during {mib['sampled_peak']:.0f} MiB"
        )
    log(f"  (the exact query gradients held while scoring are {run.tracked * args.queries * 4 / 2**20:.0f} MiB)")


def descriptions(args: argparse.Namespace, peer_k: int) -> dict[str, str]:
    """What each figure measures, for the markdown table."""
    return {
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


def print_figures(results: dict[str, float], describe: dict[str, str]) -> None:
    """The markdown table, then one `name: value` line per figure (what tests and scripts parse)."""
    print("| figure | value | target | what it measures |")
    print("|---|---|---|---|")
    for name in FIGURES:
        print(f"| `{name}` | {results[name]:.3g} | {TARGETS.get(name, '')} | {describe[name]} |")
    print()
    for name in FIGURES:
        print(f"{name}: {results[name]:.4g}")


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
    run = Run(args, model, wrap_model(model, None, layers=["mlp"], device="cpu"), *make_data(args), log)
    describe_setup(run)
    results: dict[str, float] = {}
    warm_up(run)
    exact = exact_path(run, results)
    t_new = new_query_figures(run, exact, results)
    kronfluence_figures(run, exact, results)
    if args.no_bergson:
        results |= dict.fromkeys(BERGSON_FIGURES, float("nan"))
    else:
        from bench.bergson_peer import bergson_figures

        times = {"factors": exact.t_factors, "pairwise": exact.t_queries + exact.t_stream, "new_queries": t_new}
        results |= bergson_figures(run.lm, args, run.docs, run.queries, run.starts, exact.scores, times, log)
    memory_figures(run, exact.factors, results)
    # Accuracy on a trained model (a random one's scores have no structure), untimed.
    results |= dict.fromkeys(TRAINED_FIGURES, float("nan"))
    if not args.no_trained and args.projection[0] == args.projection[1]:
        results |= trained_figures(args, log)
    log(f"baseline fwdbwd {exact.base:.2f} s on this machine; whole benchmark {time.perf_counter() - wall:.0f} s\n")
    from bench.bergson_peer import peer_projection  # here: bergson_peer imports this module

    print_figures(results, descriptions(args, peer_projection(run.lm, args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
