"""The CUDA path, checked against the CPU, and timed against a forward+backward on the same GPU.

    python bench/gpu.py            # on a machine with a CUDA GPU (about 4 minutes on an H100)
    python bench/gpu.py --quick    # a small smoke run (any CUDA GPU)

Checks (tiny random Llama, float64-free, fresh random inputs): float32 on the GPU against float32
on the CPU for EK-FAC factors, query gradients and scores (relative error); bf16 autocast on the
GPU against float32 on the GPU (per-query Pearson of scores); sampled-Fisher fitting on the GPU
reproducible run to run. Each prints PASS or FAIL with its threshold; the exit status is 1 if any
fails.

Timings (TinyLlama-1.1B's MLP width: hidden 2048 -> 5632, random weights, Zipf-random tokens):
every figure is a ratio against one training-style forward+backward over the same documents at
the same batch size, measured in the same run on the same GPU, as in bench/influence.py. The
float64 eigendecomposition runs on the host and is reported in seconds (once: the bf16 run reuses
the float32 eigenbasis).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.influence import build_model, make_data  # noqa: E402
from pretrace.batching import batches  # noqa: E402
from pretrace.documents import compute_document_gradients  # noqa: E402
from pretrace.ekfac import eigenbasis, fit_covariances, fit_factors, fit_lambdas, make_factors  # noqa: E402
from pretrace.model import wrap_model  # noqa: E402
from pretrace.projection import KroneckerProjection  # noqa: E402
from pretrace.queries import query_gradients_from_tokens  # noqa: E402
from pretrace.scores import score_matrix, stream_scores  # noqa: E402
from tests.peer import pearson  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small shapes, for a smoke run")
    p.add_argument("--out", help="write the figures as JSON here too")
    return p.parse_args(argv)


def shape(quick: bool, **overrides) -> argparse.Namespace:
    """bench/influence.py's arguments: the timed model, or the tiny one of the checks."""
    base = dict(vocab=32000, hidden=2048, intermediate=5632, layers=2, heads=16, docs=128, doc_len=512,
                queries=64, prompt_len=32, completion_len=16, seed=0, batch_size=8)
    if quick:
        base.update(hidden=256, intermediate=704, docs=32, doc_len=128, queries=16)
    return argparse.Namespace(**{**base, **overrides})


def timed(fn, repeats: int = 2) -> float:
    """Median seconds of `fn` on the GPU (synchronized), after one warm-up call."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def fwdbwd(model, sequences, batch_size, device, dtype=torch.float32) -> None:
    """The baseline: Hugging Face's own causal-LM loss, backward into the parameters."""
    model.requires_grad_(True)
    with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        for _, batch in batches(sequences, batch_size, 0):
            ids, mask = batch.input_ids.to(device), batch.attention_mask.to(device)
            model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss.backward()
    model.zero_grad(set_to_none=True)


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    x, ref = x.double().cpu(), ref.double().cpu()
    return float((x - ref).norm() / ref.norm())


# ------------------------------------------------------------------------------------ checks
def checks(results: dict) -> bool:
    args = shape(True, vocab=512, hidden=64, intermediate=176, layers=2, heads=4, docs=24, doc_len=48,
                 queries=8, prompt_len=12, completion_len=6)
    docs, queries, starts = make_data(args)
    qids = [f"q{i}" for i in range(len(queries))]
    runs = {}
    for device, dtype in (("cpu", "float32"), ("cuda", "float32"), ("cuda", "bfloat16")):
        lm = wrap_model(build_model(args), layers=["mlp"], device=device, dtype=dtype)
        factors = fit_factors(lm, lambda: (b for _, b in batches(docs, args.batch_size, 0)), fisher="empirical")
        qg = query_gradients_from_tokens(lm, factors, queries, starts, qids, batch_size=args.batch_size)
        runs[(device, dtype)] = (factors, qg, stream_scores(lm, qg, docs, batch_size=args.batch_size))
    cpu, gpu, bf16 = runs[("cpu", "float32")], runs[("cuda", "float32")], runs[("cuda", "bfloat16")]
    layer = next(iter(cpu[0].lambdas))
    figures = {
        "cuda_fp32_vs_cpu_lambdas_rel_err": (rel_err(gpu[0].lambdas[layer], cpu[0].lambdas[layer]), "<=", 1e-3),
        "cuda_fp32_vs_cpu_scores_rel_err": (rel_err(gpu[2], cpu[2]), "<=", 1e-3),
        "cuda_bf16_vs_fp32_scores_pearson_min": (min(pearson(bf16[2][i], gpu[2][i]) for i in range(len(qids))), ">=", 0.95),
    }
    lm = wrap_model(build_model(args), layers=["mlp"], device="cuda")
    sampled = [fit_covariances(lm, (b for _, b in batches(docs, args.batch_size, 0)), "sampled", 3) for _ in range(2)]
    figures["cuda_sampled_fisher_rerun_rel_err"] = (rel_err(sampled[1].S[layer], sampled[0].S[layer]), "<=", 1e-6)
    ok = True
    for name, (value, op, threshold) in figures.items():
        passed = value <= threshold if op == "<=" else value >= threshold
        ok &= passed
        results[name] = value
        print(f"check {name}: {value:.3g} ({'PASS' if passed else 'FAIL'}, {op} {threshold:g})", flush=True)
    return ok


# ------------------------------------------------------------------------------------ timings
def timings(quick: bool, results: dict) -> None:
    args = shape(quick)
    docs, queries, starts = make_data(args)
    qids = [f"q{i}" for i in range(len(queries))]
    B = args.batch_size
    print(f"timed model: hidden {args.hidden} -> {args.intermediate}, {args.layers} layers, vocab {args.vocab}; "
          f"{args.docs} docs x {args.doc_len} tokens, {args.queries} queries, batch {B}", flush=True)
    basis = None
    for dtype in ("float32", "bfloat16"):
        torch.manual_seed(0)
        lm = wrap_model(build_model(args), layers=["mlp"], device="cuda", dtype=dtype)
        torch_dtype = lm.dtype
        base = timed(lambda: fwdbwd(lm.model, docs, B, lm.device, torch_dtype))
        lm.model.requires_grad_(False)
        data = lambda: (b for _, b in batches(docs, B, 0))  # noqa: E731
        torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        cov = fit_covariances(lm, data(), "empirical", 0)
        torch.cuda.synchronize()
        t_cov = time.perf_counter() - t
        if basis is None:  # decomposed once, on the host: the bf16 run reuses the float32 basis
            t = time.perf_counter()
            basis = eigenbasis(cov)
            results["eigh_host_seconds"] = time.perf_counter() - t
            print(f"eigh_host_seconds: {results['eigh_host_seconds']:.4g}", flush=True)
        t = time.perf_counter()
        factors = make_factors(basis, fit_lambdas(lm, basis, data(), "empirical", 0))
        torch.cuda.synchronize()
        t_lambdas = time.perf_counter() - t
        fit_peak = torch.cuda.max_memory_allocated() / 2**30
        qg = query_gradients_from_tokens(lm, factors, queries, starts, qids, batch_size=B)
        t_scores = timed(lambda: stream_scores(lm, qg, docs, batch_size=B), repeats=1)
        proj = KroneckerProjection.build(lm.layer_shapes(), 32, 32, seed=0)
        stored = compute_document_gradients(lm, docs, [str(i) for i in range(len(docs))], projection=proj, batch_size=B)
        t_new = timed(lambda: score_matrix(
            query_gradients_from_tokens(lm, factors, queries, starts, qids, projection=proj, batch_size=B), stored),
            repeats=1)
        suffix = "" if dtype == "float32" else "_bf16"
        figures = {
            f"fwdbwd_seconds{suffix}": base,
            f"factor_passes_vs_fwdbwd{suffix}": (t_cov + t_lambdas) / base,
            f"score_vs_fwdbwd{suffix}": t_scores / base,
            f"new_queries_vs_fwdbwd{suffix}": t_new / base,
            f"fit_peak_gpu_gib{suffix}": fit_peak,
        }
        for name, value in figures.items():
            results[name] = value
            print(f"{name}: {value:.4g}", flush=True)
        lm = factors = qg = stored = cov = None  # free the GPU before the next dtype
        torch.cuda.empty_cache()


def main(argv=None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA GPU: nothing to check")
        return 0
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 means float32 in the checks and timings
    results = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    print(json.dumps(results), flush=True)
    ok = checks(results)
    timings(args.quick, results)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
