"""Real layer shapes on this CPU: the memory plan against measured allocations, and the plans of
7B and 35B models on 80 GB GPUs.

    python -m bench.scale          # half TinyLlama-1.1B's width (1024 -> 2816), 2 blocks: a few minutes
    python -m bench.scale --full   # TinyLlama's full width (2048 -> 5632), 2 blocks: much longer

Random-initialised Llama (no download), float32 on the CPU, a small Zipf-random corpus. Each step
(covariances, eigendecomposition, eigenvalue correction, query gradients, scoring) runs under
`pretrace.planning.peak_memory.PeakAllocations`; its plan (`pretrace.planning.memory_plan`: `Step.allocated`, less
the inputs already in memory, such as the weights) is printed beside it. The same covariances are
also eigendecomposed in diagonal blocks (`factor_block_size`: the widest side in 4 blocks), timed
against the whole, and the plan sizes that decomposition for Llama-2-70B's MLPs whole and in blocks.
The paper's study is then planned on H100s (`pretrace.planning.cheapest`: the cheapest setting
that fits 80 GB, by time estimated from the newest GPU result files in bench/results, each named):
Llama-2-7B's MLPs, and Command-R-35B's with the 22528-wide side in 4 diagonal blocks, bf16, 2048-token
documents, 5M documents of 2.5B tokens, EK-FAC fitted on a 10% sample, every document through the
compact store (`COMPACT_STORE`: 304 x 304 principal projections kept as rank-18 int4 factors), 80 queries at rank 64.
`one_pass_floor_gpu_days_7b_h100` is one pass of document gradients over the corpus at the measured
scoring rate; `plan_is_cheapest` checks the chosen setting against every setting of the same grid
for six published shapes. Prints one `name: value` line per figure.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import torch
from transformers import LlamaConfig

from bench.synthetic import build_model, config_of, make_data
from pretrace.errors import InputError
from pretrace.influence.ekfac import eigenbasis, fit_covariances, fit_lambdas, make_factors
from pretrace.influence.query_gradients import query_gradients_from_tokens
from pretrace.influence.scores import stream_scores
from pretrace.inputs.batching import batches
from pretrace.model.adapter import wrap_model
from pretrace.planning.cheapest import cheapest, cheapest_by_enumeration, setting, settings_lines
from pretrace.planning.measured_rates import measured_rates
from pretrace.planning.memory_plan import GB, ModelShape, Workload, plan
from pretrace.planning.peak_memory import PeakAllocations
from pretrace.planning.study_cost import corpus_tokens
from pretrace.planning.targets import target
from pretrace.testing.published_shapes import PAPER_STUDY, PUBLISHED_SHAPES, WIDE_BLOCKS

ROOT = Path(__file__).resolve().parents[1]

LLAMA_2_7B = PUBLISHED_SHAPES["Llama-2-7B"]
COMMAND_R_35B = PUBLISHED_SHAPES["Command-R-35B"]
LLAMA_2_70B = LlamaConfig(
    vocab_size=32000,
    hidden_size=8192,
    intermediate_size=28672,
    num_hidden_layers=80,
    num_attention_heads=64,
    num_key_value_heads=8,
)
BLOCKS = 4  # the block-diagonal figures split the widest side into this many blocks
PAPER_RUN = Workload(
    batch_size=8, max_length=512, dtype="bfloat16", documents=5_000_000, queries=80, query_length=256, query_rank=64
)
"""bf16 models, 512-token documents, 80 queries kept at rank 64: the 70B eigendecomposition figures' setting."""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--full", action="store_true", help="TinyLlama's full MLP width (2048 -> 5632)")
    return p.parse_args(argv)


def measured_steps(args: argparse.Namespace) -> dict[str, tuple[int, float]]:
    """Peak bytes allocated and seconds of each step, on the CPU."""
    lm = wrap_model(build_model(args), layers=["mlp"], device="cpu")
    docs, queries, starts = make_data(args)
    ids = [f"q{i}" for i in range(len(queries))]

    def data():
        return (b for _, b in batches(docs, args.batch_size, 0))

    fit_covariances(
        lm, (b for _, b in batches(docs[: args.batch_size], args.batch_size, 0))
    )  # lasting first-call caches
    steps: dict[str, tuple[int, float]] = {}

    def run(name, fn):
        start = time.perf_counter()
        with PeakAllocations() as m:
            out = fn()
        steps[name] = (m.peak, time.perf_counter() - start)
        print(f"  {name}: {m.peak / 2**20:.0f} MiB in {steps[name][1]:.1f} s", flush=True)
        return out

    cov = run("covariances", lambda: fit_covariances(lm, data()))
    # Grosse et al.'s within-layer block-diagonal factors: the same covariances decomposed in blocks
    run("eigenbasis_blocks", lambda: eigenbasis(cov, block_size=args.intermediate // BLOCKS))
    basis = run("eigenbasis", lambda: eigenbasis(cov))
    lambdas = run("lambdas", lambda: fit_lambdas(lm, basis, data()))
    factors = make_factors(basis, lambdas)
    qg = run(
        "query_gradients",
        lambda: query_gradients_from_tokens(lm, factors, queries, starts, ids, batch_size=args.batch_size),
    )
    run("scores", lambda: stream_scores(lm, qg, docs, batch_size=args.batch_size))
    return steps


def study_figures() -> dict[str, object]:
    """The paper's study planned on 80 GB H100s (module docstring), and the chooser checked by enumeration."""
    h100 = target("h100-80gb")
    rates = measured_rates(h100.card)
    for line in rates.cited():
        print(f"rate {line}", flush=True)
    figures: dict[str, object] = {}
    # the 35B's 22528-wide MLP side is kept as 4 diagonal blocks (factor_block_size): whole, its
    # eigendecomposition alone outgrows what 70 GB of bf16 weights leave of 80 GB
    blocked = replace(PAPER_STUDY, factor_block_size=WIDE_BLOCKS["Command-R-35B"])
    for label, config, work in (("7b", LLAMA_2_7B, PAPER_STUDY), ("35b", COMMAND_R_35B, blocked)):
        big = ModelShape.of_config(config, ["mlp"])
        smallest = plan(big, setting(work, len(big.layers), 1, True, work.stored_gradient_dtype)).peak
        try:
            chosen = cheapest(big, work, h100, rates)
            fits, days, setting_lines = "yes", chosen.estimate.gpu_hours / 24, settings_lines(chosen.work)
        except InputError as refused:  # nothing fits: said as such, with why
            fits, days, setting_lines = "no", "none", f"none ({refused})"
        figures |= {
            f"fits_80gb_{label}{'_2048' if label == '35b' else ''}": fits,
            f"chosen_setting_{label}_h100": setting_lines,
            f"study_gpu_days_{label}_h100": days,
            f"smallest_peak_gb_{label}": smallest.device / GB,
            f"weights_gb_{label}": smallest.parts["weights"] / GB,
        }
        if label == "7b":
            floor = corpus_tokens(work) / (rates.train_tokens_per_s_at(big.parameters) * rates.score_vs_train.value)
            figures["one_pass_floor_gpu_days_7b_h100"] = floor / 86400
            if fits == "yes":
                figures["study_vs_floor_7b"] = days * 86400 / floor
    agree = []
    for name, config in PUBLISHED_SHAPES.items():
        shape = ModelShape.of_config(config, ["mlp"])
        work = replace(PAPER_STUDY, factor_block_size=WIDE_BLOCKS.get(name))
        try:
            chosen = cheapest(shape, work, h100, rates).work
        except InputError:
            chosen = None
        by_enumeration = cheapest_by_enumeration(shape, work, h100, rates)
        agree.append(chosen == (by_enumeration and by_enumeration.work))
        print(f"  {name}: {'none fits' if chosen is None else settings_lines(chosen)}", flush=True)
    figures["plan_is_cheapest"] = "yes" if all(agree) else "no"
    return figures


def main(argv=None) -> int:
    cli = parse_args(argv)
    width = dict(hidden=2048, intermediate=5632) if cli.full else dict(hidden=1024, intermediate=2816)
    args = argparse.Namespace(
        vocab=32000,
        layers=2,
        heads=16,
        docs=16,
        doc_len=256,
        queries=4,
        prompt_len=32,
        completion_len=16,
        seed=0,
        batch_size=4,
        **width,
    )
    torch.set_num_threads(max(1, torch.get_num_threads()))
    shape = ModelShape.of_config(config_of(args), ["mlp"])
    work = Workload(
        batch_size=args.batch_size,
        max_length=args.doc_len,
        documents=args.docs,
        queries=args.queries,
        query_length=args.prompt_len + args.completion_len,
        device="cpu",
    )
    planned = plan(shape, work)
    print(
        f"hidden {args.hidden} -> {args.intermediate}, {args.layers} blocks, {args.docs} docs x {args.doc_len} tokens, "
        f"{args.queries} queries, batch {args.batch_size}, float32 on the CPU",
        flush=True,
    )
    print(planned.table(), flush=True)
    steps = measured_steps(args)
    figures: dict[str, object] = {}
    figures["eigenbasis_blocks_vs_whole"] = steps["eigenbasis_blocks"][1] / steps["eigenbasis"][1]
    for name, (peak, seconds) in steps.items():
        if name not in {s.name for s in planned.steps}:
            continue
        step = planned.step(name)
        expected = step.allocated
        figures |= {
            f"{name}_planned_mb": expected / 2**20,
            f"{name}_measured_mb": peak / 2**20,
            f"{name}_plan_error": abs(peak - expected) / expected,
            f"{name}_seconds": seconds,
        }
    heaviest = max(steps, key=lambda name: steps[name][0])
    step = planned.step(heaviest)
    planned_peak = step.allocated
    figures |= {
        "planned_peak_mb": planned_peak / 2**20,
        "measured_peak_mb": steps[heaviest][0] / 2**20,
        "plan_error": abs(steps[heaviest][0] - planned_peak) / planned_peak,
    }
    figures |= study_figures()
    widest = ModelShape.of_config(LLAMA_2_70B, ["mlp"])
    for block_size in (None, LLAMA_2_70B.intermediate_size // BLOCKS):
        eig = plan(widest, replace(PAPER_RUN, factor_block_size=block_size)).step("eigenbasis").device
        figures[f"eigenbasis_gb_70b_{'whole' if block_size is None else f'blocks_{block_size}'}"] = eig / GB
    for name, value in figures.items():
        print(f"{name}: {value:.4g}" if isinstance(value, float) else f"{name}: {value}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
