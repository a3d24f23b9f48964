"""Llama-2-7B's full shape on one GPU: a training step, every pretrace pass, their peaks against
the plan, and the paper's study in GPU-days from the rates measured here.

    python -m bench.gpu_7b                     # on a CUDA GPU with >= 40 GB (about 5 minutes on an H100)
    python -m bench.gpu_7b --tiny              # a scaled-down shape on the CPU: a smoke run of seconds

Random bf16 weights of Llama-2-7B's shape (no download: a LlamaConfig, initialised on the
device), every block present, so activations and the backward pass are a 7B model's. 2048-token
Zipf-random documents at batch 1, 80 queries kept at rank 64 (`query_rank`), the MLPs of the
first blocks tracked (`--blocks`, default 2: six full-width layers, 11008 x 4096). The first
blocks, so that every backward pass still runs through the whole model, as with every block tracked.

Steps, each timed (synchronized) and its peak allocation (`torch.cuda.max_memory_allocated`)
printed against the memory plan of the same tracked layers (`pretrace.planning.memory_plan`):
the bf16 training step (forward, backward into every parameter: the baseline), covariances,
eigendecomposition, eigenvalue corrections, query gradients, scoring (streamed, the rank-64 query
gradients resident on the device) and document gradients through the compact store (304 x 304
principal projection, rank 18). The JSON result is rewritten after every step, and the run stops
before ``--deadline-s`` (default 420 s), so a lost machine or a slow step still leaves figures.

Rates at every block's MLPs: each pass is timed with the first block's MLPs and with the first
``--blocks``; the difference is one block's share, so a pass with all 32 blocks tracked takes
T(1) + 31 x (T(2) - T(1)) (the forward and backward are paid once whatever is tracked). Ratios to
the training step are of those extrapolated times, and `study_gpu_days_7b_h100` is the estimate
of `pretrace.planning.study_cost` for the paper's study (Llama-2-7B's MLPs, 5M documents of 2.5B
tokens, factors fitted on a 10% sample, every document through the compact store, 80 queries at
rank 64) in the setting the planner chooses for one H100 (`pretrace.planning.cheapest`), with the
rates of this run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from bench.gpu import training_step
from bench.scale import LLAMA_2_7B, PAPER_RUN
from bench.synthetic import make_data
from pretrace.config import COMPACT_STORE
from pretrace.errors import InputError
from pretrace.influence.document_gradients import compute_document_gradients
from pretrace.influence.ekfac import Eigenbasis, Factors, eigenbasis, fit_covariances, fit_lambdas, make_factors
from pretrace.influence.projection import KroneckerProjection
from pretrace.influence.query_gradients import QueryGradients, query_gradients_from_tokens
from pretrace.influence.scores import stream_scores
from pretrace.inputs.batching import batches
from pretrace.model.adapter import LoadedModel, wrap_model
from pretrace.planning.cheapest import cheapest, settings_lines
from pretrace.planning.measured_rates import SCALE_RUN_LAYERS, SCALE_RUN_QUERIES, MeasuredRates, Rate
from pretrace.planning.memory_plan import GB, ModelShape, Plan, Workload, plan
from pretrace.planning.targets import target

ROOT = Path(__file__).resolve().parents[1]
QUERIES, QUERY_RANK, QUERY_CHUNK = 80, 64, 8
QUERY_BUDGET_S = 60.0
"""Seconds of query gradients computed before the rest are repeats (`chunked_queries`)."""
PAPER_STUDY = replace(
    PAPER_RUN,
    max_length=2048,
    document_tokens=500,  # 2.5B tokens over 5M documents
    fit_documents=0.1,
    projection=COMPACT_STORE["projection"],
    document_rank=COMPACT_STORE["document_rank"],
    stored_gradient_dtype=COMPACT_STORE["stored_gradient_dtype"],
)
"""The paper's study (issue 29): what `study_gpu_days_7b_h100` estimates."""
STEPS = ("covariances", "eigenbasis", "lambdas", "query_gradients", "scores")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="a scaled-down shape on the CPU (a smoke run)")
    p.add_argument("--blocks", type=int, default=2, help="blocks whose MLPs are tracked (the first ones)")
    p.add_argument("--docs", type=int, default=8, help="documents each pass runs over")
    p.add_argument("--deadline-s", type=float, default=420.0, help="stop before this many seconds")
    p.add_argument("--results", default=str(ROOT / "bench" / "results"), help="folder of the JSON result")
    p.add_argument("--out", help="the JSON result (default RESULTS/gpu-7b-<date>-<card>.json)")
    return p.parse_args(argv)


def shape(tiny: bool, docs: int) -> tuple[LlamaConfig, argparse.Namespace]:
    """The model's configuration and `bench.synthetic.make_data`'s arguments."""
    config = LlamaConfig(**{**LLAMA_2_7B.to_dict(), "max_position_embeddings": 4096, "pad_token_id": 0})
    data = argparse.Namespace(vocab=32000, docs=docs, doc_len=2048, queries=QUERIES, prompt_len=224, completion_len=32)
    if tiny:
        config = LlamaConfig(
            vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2
        )
        data = argparse.Namespace(vocab=128, docs=2, doc_len=16, queries=QUERIES // 10, prompt_len=6, completion_len=2)
    data.seed = 0
    return config, data


def card_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def card_slug(device: torch.device) -> str:
    """The card in a file name: ``h100-80gb-hbm3`` for "NVIDIA H100 80GB HBM3"."""
    return re.sub(r"[^a-z0-9]+", "-", card_name(device).lower().removeprefix("nvidia ")).strip("-")


class Run:
    """The results, rewritten to ``path`` after every step, and the time left before the deadline."""

    def __init__(self, path: Path, device: torch.device, deadline_s: float) -> None:
        self.path, self.device, self.deadline = path, device, time.monotonic() + deadline_s
        self.results: dict = {
            "device": card_name(device),
            "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d"),
        }
        self.planned: Plan | None = None  # the plan the steps' peaks are compared with

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def record(self, **figures) -> None:
        self.results.update(figures)
        for name, value in figures.items():
            print(f"{name}: {value:.4g}" if isinstance(value, float) else f"{name}: {value}", flush=True)
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.results, indent=1) + "\n")
        os.replace(temporary, self.path)

    def step(self, name: str, label: str, fn: Callable, budget_s: float):
        """``fn()`` timed, its peak recorded against the plan's step ``name``; None (and the stop
        recorded) when less than ``budget_s`` is left before the deadline."""
        if self.left() < budget_s:
            self.record(stopped_before=f"{name} ({label}), {self.left():.0f} s left")
            return None
        with self.measured() as m:
            result = fn()
        figures = {f"{name}_seconds_{label}": m["seconds"]}
        if self.planned is not None and name in STEPS and self.device.type == "cuda":
            expected = self.planned.step(name).device
            # the eigendecomposition needs no model (the pipeline's asset loads none): its own bytes
            peak = m["added"] if name == "eigenbasis" else m["peak"]
            figures |= {
                f"{name}_measured_gb": peak / GB,
                f"{name}_planned_gb": expected / GB,
                f"{name}_vs_plan": peak / expected,
            }
        self.record(**figures)
        return result

    @contextmanager
    def measured(self) -> Iterator[dict]:
        """Seconds, peak allocated device bytes and those above what was allocated when the block
        began (``added``) of the block (0 on a CPU: no allocator to ask)."""
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        resident = torch.cuda.memory_allocated(self.device) if cuda else 0
        taken = {"start": time.perf_counter()}
        yield taken
        if cuda:
            torch.cuda.synchronize(self.device)
        taken["seconds"] = time.perf_counter() - taken.pop("start")
        taken["peak"] = torch.cuda.max_memory_allocated(self.device) if cuda else 0
        taken["added"] = taken["peak"] - resident


def tracked(blocks: int) -> list[str]:
    """`layers` patterns of the MLPs of the first ``blocks`` blocks."""
    return [rf"model\.layers\.({'|'.join(map(str, range(blocks)))})\.mlp\."]


def extrapolated(one: float, some: float, blocks: int, total: int) -> float:
    """A pass's seconds with every block tracked, from one block's and ``blocks`` blocks' (module docstring)."""
    per_block = max(some - one, 0.0) / (blocks - 1)
    return one + (total - 1) * per_block


def chunked_queries(run: Run, lm: LoadedModel, factors: Factors, queries: tuple) -> QueryGradients:
    """Every query's rank-64 gradients, `QUERY_CHUNK` at a time, gathered on the device. After
    `QUERY_BUDGET_S` (a full SVD per query and layer is slow at 7B widths) the chunks done so far
    are repeated up to every query: scoring costs the same whatever their values, and the
    seconds a query are recorded."""
    sequences, starts, ids = queries
    done: list[QueryGradients] = []
    started = time.perf_counter()
    for first in range(0, len(sequences), QUERY_CHUNK):
        if done and time.perf_counter() - started > QUERY_BUDGET_S:
            break
        part = slice(first, first + QUERY_CHUNK)
        done.append(
            query_gradients_from_tokens(
                lm, factors, sequences[part], starts[part], ids[part], rank=QUERY_RANK, batch_size=1, gather=lm.device
            )
        )
    computed = sum(len(q.ids) for q in done)
    run.record(query_gradients_computed=computed, query_seconds=(time.perf_counter() - started) / computed)
    return repeated_to(done, ids)


def repeated_to(parts: list[QueryGradients], ids: list[str]) -> QueryGradients:
    """The queries of ``parts`` as one set of ``len(ids)`` queries named ``ids``, the parts repeated
    as often as needed."""

    def joined(tensors: list[torch.Tensor]) -> torch.Tensor:
        whole = torch.cat(tensors)
        return whole.repeat(-(-len(ids) // len(whole)), *[1] * (whole.dim() - 1))[: len(ids)]

    first = parts[0]
    return replace(
        first,
        ids=list(ids),
        logprobs=joined([p.logprobs for p in parts]),
        left={k: joined([p.left[k] for p in parts]) for k in first.left},
        right={k: joined([p.right[k] for p in parts]) for k in first.right},
    )


def of_layers(queries: QueryGradients, lm: LoadedModel) -> QueryGradients:
    """The query gradients of ``lm``'s tracked layers only."""
    names = [layer.name for layer in lm.layers]
    return replace(queries, left={k: queries.left[k] for k in names}, right={k: queries.right[k] for k in names})


def document_passes(
    run: Run, lm: LoadedModel, docs: list, factors: Factors, queries: QueryGradients, label: str
) -> bool:
    """Scoring (streamed) and document gradients through the compact store; False when stopped."""
    budget = 2 * run.results["train_seconds"]
    ids = [str(i) for i in range(len(docs))]
    store = KroneckerProjection.build(
        lm.layer_shapes(), *COMPACT_STORE["projection"], basis="principal", factors=factors
    )
    return all(
        run.step(name, label, fn, budget) is not None
        for name, fn in (
            ("scores", lambda: stream_scores(lm, of_layers(queries, lm), docs, batch_size=1)),
            (
                "document_gradients",
                lambda: compute_document_gradients(
                    lm, docs, ids, projection=store, rank=COMPACT_STORE["document_rank"], batch_size=1
                ),
            ),
        )
    )


def study_days(run: Run, config: LlamaConfig, seconds: dict[str, float], tokens: int) -> None:
    """`study_gpu_days_7b_h100`: the planner's cheapest setting on one H100 for the paper's study,
    timed with this run's rates (`pretrace.planning.measured_rates.MeasuredRates`)."""
    source, card = run.path.name, run.results["device"]
    full = ModelShape.of_config(config, ["mlp"])
    layers = list(full.layers.values())
    train = run.results["train_seconds"]
    rates = MeasuredRates(
        train_tokens_per_s=Rate(tokens / train, source, card),
        parameters=full.parameters,
        score_vs_train=Rate(train / seconds["document_gradients"], source, card),
        fit_vs_train=Rate((seconds["covariances"] + seconds["lambdas"]) / train, source, card),
        eigendecomposition_seconds=Rate(
            seconds["eigenbasis"] * _cubes(SCALE_RUN_LAYERS) / _cubes(layers), source, card
        ),
        query_gradients_seconds=Rate(
            seconds["query_gradients"]
            * SCALE_RUN_QUERIES
            / run.results["queries"]
            * _precondition(SCALE_RUN_LAYERS)
            / _precondition(layers),
            source,
            card,
        ),
    )
    try:
        chosen = cheapest(full, PAPER_STUDY, target("h100-80gb"), rates)
    except InputError as refused:
        run.record(study_refused=str(refused).splitlines()[0])
        return
    run.record(
        study_setting=settings_lines(chosen.work).replace("\n", "; "),
        study_gpu_days_7b_h100=chosen.estimate.gpu_hours / 24,
    )


def _cubes(layers: list[tuple[int, int]]) -> int:
    """What a dense symmetric eigensolver's time grows with: the cubed covariance sides."""
    return sum(o**3 + i**3 for o, i in layers)


def _precondition(layers: list[tuple[int, int]]) -> int:
    """What a query's preconditioning grows with: two rotations of each d_out x d_in gradient."""
    return sum(o * i * (o + i) for o, i in layers)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device("cpu" if args.tiny else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU: nothing to measure (--tiny runs a scaled-down shape on the CPU)")
        return 0
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 sums mean float32, as in bench/gpu.py
    config, data = shape(args.tiny, args.docs)
    slug = card_slug(device)
    out = Path(args.out or Path(args.results) / f"gpu-7b-{time.strftime('%Y-%m-%d')}-{slug}.json")
    run = Run(out, device, args.deadline_s)
    docs, sequences, starts = make_data(data)
    queries = (sequences, starts, [f"q{i}" for i in range(len(sequences))])
    blocks = args.blocks
    model_shape = ModelShape.of_config(config, ["mlp"])
    run.record(
        tiny=args.tiny,
        tf32=False,
        parameters=model_shape.parameters,
        blocks_tracked=blocks,
        documents=len(docs),
        document_tokens=data.doc_len,
        queries=len(sequences),
        query_rank=QUERY_RANK,
    )
    with run.measured() as m, torch.device(device):
        torch.manual_seed(0)
        model = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16).eval()
    run.record(init_seconds=m["seconds"], weights_gb=m["peak"] / GB)

    tokens = len(docs) * data.doc_len
    training_step(model, docs[:1], 1, device)  # warm-up
    with run.measured() as m:
        training_step(model, docs, 1, device)
    run.record(train_seconds=m["seconds"], train_step_tokens_per_s=tokens / m["seconds"], train_peak_gb=m["peak"] / GB)

    lm = wrap_model(model, layers=tracked(blocks), device=device.type, dtype="bfloat16")
    run.planned = plan(
        ModelShape.of_config(config, tracked(blocks)),
        Workload(
            batch_size=1,
            max_length=data.doc_len,
            dtype="bfloat16",
            documents=len(docs),
            queries=len(sequences),
            query_length=data.prompt_len + data.completion_len,
            query_rank=QUERY_RANK,
            device=device.type,
        ),
    )
    label = f"{blocks}_blocks"
    fitted = fitting_passes(run, lm, docs, label)
    qg = fitted and run.step("query_gradients", label, lambda: chunked_queries(run, lm, fitted[1], queries), 30.0)
    if qg is None or not document_passes(run, lm, docs, fitted[1], qg, label):
        return 0
    run.planned = None  # one block tracked: the slope of each pass (module docstring)
    one = wrap_model(model, layers=tracked(1), device=device.type, dtype="bfloat16")
    if fitting_passes(run, one, docs, "1_blocks", fitted[0]) is None or not document_passes(
        run, one, docs, fitted[1], qg, "1_blocks"
    ):
        return 0
    seconds = every_block_seconds(run.results, label, blocks, config.num_hidden_layers)
    train = run.results["train_seconds"]
    run.record(
        **{f"{name}_seconds_7b_mlps": value for name, value in seconds.items()},
        factor_passes_vs_train_step=(seconds["covariances"] + seconds["lambdas"]) / train,
        score_resident_vs_train_step_tokens_per_s=train / seconds["scores"],
        document_gradients_vs_train_step_tokens_per_s=train / seconds["document_gradients"],
    )
    study_days(run, config, seconds, tokens)
    return 0


def fitting_passes(
    run: Run, lm: LoadedModel, docs: list, label: str, basis: Eigenbasis | None = None
) -> tuple[Eigenbasis, Factors] | None:
    """Covariances, their eigendecomposition (unless ``basis`` is given: the slope run reuses
    it) and eigenvalue corrections over ``docs``; None when the deadline stopped them."""
    budget = 2 * run.results["train_seconds"]

    def data():
        return (b for _, b in batches(docs, 1, 0))

    cov = run.step("covariances", label, lambda: fit_covariances(lm, data(), "empirical", 0), budget)
    if cov is not None and basis is None:
        basis = run.step("eigenbasis", label, lambda: eigenbasis(cov, lm.device), 30.0)
    cov = None  # freed before the next pass
    if basis is None:
        return None
    lambdas = run.step("lambdas", label, lambda: fit_lambdas(lm, basis, data(), "empirical", 0), 2 * budget)
    return None if lambdas is None else (basis, make_factors(basis, lambdas))


def every_block_seconds(measured: dict, label: str, blocks: int, total: int) -> dict[str, float]:
    """Each pass's seconds with every block's MLPs tracked (module docstring)."""
    seconds = {
        name: extrapolated(measured[f"{name}_seconds_1_blocks"], measured[f"{name}_seconds_{label}"], blocks, total)
        for name in ("covariances", "lambdas", "scores", "document_gradients")
    }
    # the eigendecomposition and the queries' preconditioning and SVDs are per layer: scaled (the
    # queries' forward and backward counted once a block, an upper bound), every query's
    seconds["eigenbasis"] = measured[f"eigenbasis_seconds_{label}"] * total / blocks
    seconds["query_gradients"] = measured["query_seconds"] * measured["queries"] * total / blocks
    return seconds


if __name__ == "__main__":
    raise SystemExit(main())
