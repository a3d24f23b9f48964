"""The CUDA path, checked against the CPU, and measured on a 1B-class model against a training step.

    python -m bench.gpu            # on a machine with a CUDA GPU (a few minutes on an H100)
    python -m bench.gpu --quick    # a small smoke run (any CUDA GPU)

Checks (tiny random Llama, fresh random inputs): float32 on the GPU against float32 on the CPU
for EK-FAC factors and scores (relative error), and for scores through stored projected
gradients (whitened and principal, dense and rank-3 factored); bf16 autocast on the GPU against
float32 on the GPU (per-query Pearson of scores); sampled-Fisher fitting on the GPU reproducible
run to run; layer-grouped fitting and scoring on the GPU against one pass. Each prints PASS or FAIL with its
threshold; the exit status is 1 if any fails.

Products: the score product of one batch in one layer at the scale run's width, as one long
(Q, D) x (D, B) product against the batched product over blocks of rows that scoring uses
(`pretrace.influence.blocked_products`), for several block sizes, as time ratios and errors against float64.

Scale (TinyLlama-1.1B's shape: 22 blocks, hidden 2048 -> 5632, 32 heads with 4 key-value heads,
vocabulary 32000; random weights in bf16, as `load_model` loads a bf16 checkpoint; Zipf-random
tokens): the memory plan (`pretrace.planning.memory_plan`) chooses the layer groups that fit the GPU, then
every step runs with them and its peak device memory (the allocator's) is printed against the
plan. Times are ratios to a bf16 training step (forward, backward into every parameter) over the
same documents at the same batch size, in the same run: scoring tokens/s over training tokens/s
(goal >= 0.8), whole (the dense query gradients moved from the host first, as a scores
partition loads them) and resident (already on the device: the rate at which each further
document is scored, what a corpus-scale shard sees), and factor
fitting (both passes over the data) over one training pass.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch
from transformers import LlamaForCausalLM

from bench.synthetic import build_model, config_of, make_data
from pretrace.analyses.correlation import pearson
from pretrace.influence.blocked_products import blocked_inner_products
from pretrace.influence.capture import capture
from pretrace.influence.document_gradients import compute_document_gradients
from pretrace.influence.ekfac import Factors, eigenbasis, fit_covariances, fit_factors, fit_lambdas, make_factors
from pretrace.influence.layer_groups import layer_groups
from pretrace.influence.projection import KroneckerProjection
from pretrace.influence.quantization import quantize
from pretrace.influence.query_gradients import query_gradients_from_tokens
from pretrace.influence.scores import score_matrix, stream_scores
from pretrace.inputs.batching import batches
from pretrace.model.adapter import wrap_model
from pretrace.planning.cheapest import fewest_groups
from pretrace.planning.memory_plan import GB, ModelShape, Workload
from pretrace.planning.memory_plan import plan as memory_plan

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small shapes, for a smoke run")
    p.add_argument("--out", help="write the figures as JSON here too")
    p.add_argument(
        "--tf32",
        action="store_true",
        help="let float32 matrix products use TF32 in the scale run "
        "(the fitting sums, per-example gradients and scores; the checks stay float32)",
    )
    p.add_argument("--scale-only", action="store_true", help="skip the checks")
    p.add_argument(
        "--profile",
        help="write torch.profiler's tables of one pass over 16 documents of scoring, "
        "covariances and eigenvalue correction to PROFILE-{scoring,covariances,lambdas}.txt",
    )
    return p.parse_args(argv)


def shape(quick: bool, **overrides) -> argparse.Namespace:
    """bench/synthetic.py's arguments: TinyLlama-1.1B's shape, or a small one (--quick, the checks)."""
    base = dict(
        vocab=32000,
        hidden=2048,
        intermediate=5632,
        layers=22,
        heads=32,
        kv_heads=4,
        docs=64,
        doc_len=512,
        queries=8,
        prompt_len=32,
        completion_len=16,
        seed=0,
        batch_size=8,
    )
    if quick:
        base.update(hidden=256, intermediate=704, layers=4, heads=4, kv_heads=2, docs=16, doc_len=128)
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


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    x, ref = x.double().cpu(), ref.double().cpu()
    return float((x - ref).norm() / ref.norm())


# ------------------------------------------------------------------------------------ checks
def checks(results: dict) -> bool:
    args = shape(
        True,
        vocab=512,
        hidden=64,
        intermediate=176,
        layers=2,
        heads=4,
        docs=24,
        doc_len=48,
        queries=8,
        prompt_len=12,
        completion_len=6,
    )
    docs, queries, starts = make_data(args)
    qids = [f"q{i}" for i in range(len(queries))]

    def data():
        return (b for _, b in batches(docs, args.batch_size, 0))

    runs = {}
    for device, dtype in (("cpu", "float32"), ("cuda", "float32"), ("cuda", "bfloat16")):
        model = build_model(args).to(getattr(torch, dtype))  # bf16 weights, as load_model loads them
        lm = wrap_model(model, layers=["mlp"], device=device, dtype=dtype)
        factors = fit_factors(lm, data, fisher="empirical")
        qg = query_gradients_from_tokens(lm, factors, queries, starts, qids, batch_size=args.batch_size)
        runs[(device, dtype)] = (factors, qg, stream_scores(lm, qg, docs, batch_size=args.batch_size))
    cpu, gpu, bf16 = runs[("cpu", "float32")], runs[("cuda", "float32")], runs[("cuda", "bfloat16")]
    layer = next(iter(cpu[0].lambdas))
    figures = {
        "cuda_fp32_vs_cpu_lambdas_rel_err": (rel_err(gpu[0].lambdas[layer], cpu[0].lambdas[layer]), "<=", 1e-3),
        "cuda_fp32_vs_cpu_scores_rel_err": (rel_err(gpu[2], cpu[2]), "<=", 1e-3),
        "cuda_bf16_vs_fp32_scores_pearson_min": (
            min(pearson(bf16[2][i], gpu[2][i]) for i in range(len(qids))),
            ">=",
            0.95,
        ),
    }
    for basis in ("whitened", "principal"):
        for rank in (None, 3):
            on = {
                device: projected_store_scores(args, cpu[0], basis, rank, device, (docs, queries, starts, qids))
                for device in ("cpu", "cuda")
            }
            name = f"cuda_fp32_vs_cpu_{basis}{'' if rank is None else f'_rank{rank}'}_scores_rel_err"
            figures[name] = (rel_err(on["cuda"], on["cpu"]), "<=", 1e-3)
    x = torch.randn(24, 16, 17, generator=torch.Generator().manual_seed(0)) * torch.logspace(-6, 2, 17)
    for bits in (8, 4):  # a quantized store's codes and scales do not depend on the device that rounds them
        (codes, scales), (gpu_codes, gpu_scales) = quantize(x, bits), quantize(x.cuda(), bits)
        figures[f"cuda_vs_cpu_int{bits}_code_mismatches"] = (
            float((gpu_codes.cpu() != codes).sum() + (gpu_scales.cpu() != scales).sum()),
            "<=",
            0,
        )
    half = wrap_model(build_model(args).to(torch.bfloat16), layers=["mlp"], device="cuda", dtype="bfloat16")
    cap = capture(half, next(iter(data())))  # kept in bf16, multiplied on tensor cores into float32
    figures["cuda_half_products_vs_upcast_rel_err"] = (
        max(rel_err(cap.per_example_gradients(k), cap.g[k].float().transpose(1, 2) @ cap.a[k].float()) for k in cap.a),
        "<=",
        1e-4,
    )
    figures["cuda_half_capture_kept_bf16"] = (float(all(cap.a[k].dtype == torch.bfloat16 for k in cap.a)), ">=", 1)
    lm = wrap_model(build_model(args), layers=["mlp"], device="cuda")
    sampled = [fit_covariances(lm, data(), "sampled", 3) for _ in range(2)]
    figures["cuda_sampled_fisher_rerun_rel_err"] = (rel_err(sampled[1].S[layer], sampled[0].S[layer]), "<=", 1e-6)
    whole, grouped = (fit_factors(lm, data, fisher="empirical", groups=g) for g in (1, 3))
    figures["cuda_grouped_vs_whole_lambdas_rel_err"] = (
        max(rel_err(grouped.lambdas[k], whole.lambdas[k]) for k in whole.layers),
        "<=",
        1e-5,
    )
    qg = query_gradients_from_tokens(lm, whole, queries, starts, qids, batch_size=args.batch_size)
    figures["cuda_grouped_vs_whole_scores_rel_err"] = (
        rel_err(
            stream_scores(lm, qg, docs, batch_size=args.batch_size, groups=3),
            stream_scores(lm, qg, docs, batch_size=args.batch_size),
        ),
        "<=",
        1e-5,
    )
    ok = True
    for name, (value, op, threshold) in figures.items():
        passed = value <= threshold if op == "<=" else value >= threshold
        ok &= passed
        results[name] = value
        print(f"check {name}: {value:.3g} ({'PASS' if passed else 'FAIL'}, {op} {threshold:g})", flush=True)
    return ok


def projected_store_scores(
    args: argparse.Namespace, factors: Factors, basis: str, rank: int | None, device: str, data: tuple
) -> torch.Tensor:
    """Scores through a (16, 16) projection in ``basis`` (documents stored at ``rank``) on ``device``,
    built from the same factors on each device so that only the projected path differs."""
    docs, queries, starts, qids = data
    lm = wrap_model(build_model(args), layers=["mlp"], device=device)
    factors = factors.to(lm.device)
    projection = KroneckerProjection.build(lm.layer_shapes(), 16, 16, basis=basis, factors=factors)
    qg = query_gradients_from_tokens(
        lm, factors, queries, starts, qids, projection=projection, batch_size=args.batch_size
    )
    stored = compute_document_gradients(
        lm, docs, [str(i) for i in range(len(docs))], projection=projection, rank=rank, batch_size=args.batch_size
    )
    return score_matrix(qg, stored)


# ------------------------------------------------------------------------------------ scale
def training_step(model, sequences, batch_size, device) -> None:
    """The baseline: Hugging Face's own causal-LM loss, backward into every parameter."""
    model.requires_grad_(True)
    for _, batch in batches(sequences, batch_size, 0):
        ids, mask = batch.input_ids.to(device), batch.attention_mask.to(device)
        model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss.backward()
    model.zero_grad(set_to_none=True)
    model.requires_grad_(False)


class Measured:
    """Seconds and peak allocated device bytes of the block it wraps (``added``: above what was
    allocated when it began)."""

    def __enter__(self) -> Measured:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        self.resident = torch.cuda.memory_allocated()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.start
        self.bytes = torch.cuda.max_memory_allocated()
        self.added = self.bytes - self.resident


def products(quick: bool, results: dict) -> None:
    """The score product of one batch in one layer (float32; 8 queries, 8 documents, the largest
    tracked layer of the scale run's model): one (Q, D) x (D, B) product, as cuBLAS runs it,
    against the batched product over blocks of rows that scoring uses, for several block sizes."""
    args = shape(quick)
    rows, cols = args.intermediate, args.hidden
    x = torch.randn(args.queries, rows, cols, device="cuda")
    y = torch.randn(args.batch_size, rows, cols, device="cuda")
    plain = timed(lambda: x.flatten(1) @ y.flatten(1).T, repeats=20)
    figures = {"score_product_plain_ms": plain * 1e3}
    reference = x.flatten(1).double() @ y.flatten(1).double().T
    for numbers in (cols, 1 << 14, 1 << 16, 1 << 18, 1 << 20):
        blocked = timed(lambda n=numbers: blocked_inner_products(x, y, n), repeats=20)
        figures[f"score_product_blocked_{numbers}_vs_plain"] = blocked / plain
        figures[f"score_product_blocked_{numbers}_rel_err"] = rel_err(blocked_inner_products(x, y, numbers), reference)
    figures["score_product_default_vs_plain"] = timed(lambda: blocked_inner_products(x, y), repeats=20) / plain
    figures["score_product_plain_rel_err"] = rel_err(x.flatten(1) @ y.flatten(1).T, reference)
    for name, value in figures.items():
        results[name] = value
        print(f"{name}: {value:.4g}", flush=True)


def profiled(fn, path: str):
    """``fn()``, and where it spent its GPU time, operator by operator (torch.profiler's table)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        result = fn()
        torch.cuda.synchronize()
    averages = prof.key_averages()
    key = "device_time_total" if hasattr(averages[0], "device_time_total") else "cuda_time_total"
    Path(path).write_text(averages.table(sort_by=key, row_limit=30) + "\n")
    return result


def scale(quick: bool, results: dict, profile: str | None = None) -> None:
    args = shape(quick)
    docs, queries, starts = make_data(args)
    qids = [f"q{i}" for i in range(len(queries))]
    B, tokens = args.batch_size, args.docs * args.doc_len
    config = config_of(args)
    config.num_key_value_heads = args.kv_heads
    model_shape = ModelShape.of_config(config, ["mlp"])
    work = Workload(
        batch_size=B,
        max_length=args.doc_len,
        dtype="bfloat16",
        documents=args.docs,
        queries=args.queries,
        query_length=args.prompt_len + args.completion_len,
    )
    total = torch.cuda.mem_get_info()[1]
    fitted = fewest_groups(model_shape, work, lambda planned: planned.peak.device <= 0.9 * total)  # at batch B
    if fitted is None:
        raise SystemExit(f"the scale run does not fit {total / GB:.1f} GB at batch {B} in any layer groups")
    plan = memory_plan(model_shape, fitted)
    print(
        f"model: {model_shape.parameters / 1e9:.2f}B parameters, {len(model_shape.layers)} tracked layers; "
        f"{args.docs} docs x {args.doc_len} tokens, {args.queries} queries, batch {B}; device {total / GB:.1f} GB",
        flush=True,
    )
    print(plan.table(), flush=True)
    groups = fitted.layer_groups
    results.update(layer_groups=groups, parameters=model_shape.parameters)
    torch.manual_seed(args.seed)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    lm = wrap_model(model, layers=["mlp"], device="cuda", dtype="bfloat16")
    base = timed(lambda: training_step(lm.model, docs, B, lm.device))

    def data():
        return (b for _, b in batches(docs, B, 0))

    steps = ("covariances", "eigenbasis", "lambdas", "query_gradients", "scores")
    peaks, seconds = dict.fromkeys(steps, 0), dict.fromkeys(steps, 0.0)

    def record(name: str, m: Measured) -> None:
        """The eigendecomposition needs no model (the pipeline's asset loads none): its own bytes."""
        peaks[name] = max(peaks[name], m.added if name == "eigenbasis" else m.bytes)
        seconds[name] += m.seconds

    parts, bases = [], []
    for group in layer_groups(lm, groups):
        with Measured() as m:
            cov = fit_covariances(group, data(), "empirical", 0)
        record("covariances", m)
        with Measured() as m:
            basis = eigenbasis(cov, lm.device)
        record("eigenbasis", m)
        cov = None
        with Measured() as m:
            lambdas = fit_lambdas(group, basis, data(), "empirical", 0)
        record("lambdas", m)
        parts.append(make_factors(basis, lambdas))
        bases.append(basis)
    factors = Factors.join(parts)
    with Measured() as m:
        qg = query_gradients_from_tokens(lm, factors, queries, starts, qids, batch_size=B, groups=groups)
    record("query_gradients", m)
    with Measured() as m:
        stream_scores(lm, qg, docs, batch_size=B, groups=groups)
    record("scores", m)
    resident = replace(qg, left={name: left.to(lm.device) for name, left in qg.left.items()})
    with Measured() as m:  # each further document's cost: the query gradients already on the device
        stream_scores(lm, resident, docs, batch_size=B)
    resident = None
    figures = {
        "train_step_tokens_per_s": tokens / base,
        "score_tokens_per_s": tokens / seconds["scores"],
        "score_vs_train_step_tokens_per_s": base / seconds["scores"],
        "score_resident_tokens_per_s": tokens / m.seconds,
        "score_resident_vs_train_step_tokens_per_s": base / m.seconds,
        "factor_passes_vs_train_step": (seconds["covariances"] + seconds["lambdas"]) / base,
        "eigendecomposition_seconds": seconds["eigenbasis"],
        "query_gradients_seconds": seconds["query_gradients"],
    }
    errors = []
    for name in steps:
        planned = plan.step(name).device
        errors.append(abs(peaks[name] - planned) / planned)
        figures |= {
            f"{name}_planned_gb": planned / GB,
            f"{name}_measured_gb": peaks[name] / GB,
            f"{name}_plan_error": errors[-1],
        }
    figures["plan_error_max"] = max(errors)
    for name, value in figures.items():
        results[name] = value
        print(f"{name}: {value:.4g}", flush=True)
    if profile:
        first, sixteen = next(iter(layer_groups(lm, groups))), lambda: (b for _, b in batches(docs[:16], B, 0))
        profiled(lambda: stream_scores(lm, qg, docs[:16], batch_size=B, groups=groups), f"{profile}-scoring.txt")
        profiled(lambda: fit_covariances(first, sixteen(), "empirical", 0), f"{profile}-covariances.txt")
        exact = profiled(lambda: fit_lambdas(first, bases[0], sixteen(), "empirical", 0), f"{profile}-lambdas.txt")
        torch.backends.cuda.matmul.allow_tf32 = True  # what TF32 rotations would save, and cost
        tf32 = profiled(lambda: fit_lambdas(first, bases[0], sixteen(), "empirical", 0), f"{profile}-lambdas-tf32.txt")
        torch.backends.cuda.matmul.allow_tf32 = results["tf32"]
        results["lambdas_tf32_rel_err"] = max(rel_err(tf32.sums[k], exact.sums[k]) for k in exact.sums)
        print(f"lambdas_tf32_rel_err: {results['lambdas_tf32_rel_err']:.3g}", flush=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA GPU: nothing to check")
        return 0
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 means float32 in the checks and the fitting sums
    results = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    print(json.dumps(results), flush=True)
    ok = True if args.scale_only else checks(results)
    torch.backends.cuda.matmul.allow_tf32 = results["tf32"] = args.tf32
    try:
        products(args.quick, results)
        scale(args.quick, results, args.profile)
    finally:
        if args.out:
            Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
