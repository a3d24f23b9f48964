"""bergson (EleutherAI's attribution library, 2.5.1) set up to compute what pretrace computes.

    python -m bench.bergson_peer --quick               # a tiny run (~15 s, mostly imports)
    python -m bench.bergson_peer                       # the benchmark's default shape (several minutes)
    python -m bench.bergson_peer --bergson-positions   # bergson's own activation-covariance convention

Why: kronfluence is not the only EK-FAC implementation people would reach for; bergson is the
other maintained one. `bergson_runner` is for bench/influence.py's bergson figures; `main`
runs the same comparison standalone and prints bergson's agreement with pretrace's exact scores
and its times as ratios to pretrace's, measured in this run on this machine.

bergson is configured like pretrace: the MLP linears only, summed next-token cross-entropy per
document (`loss_reduction="sum"`) and over a query's completion tokens (its prompt labelled -100),
dataset labels for the factors (the empirical Fisher), corrected eigenvalues (`ev_correction`)
damped by 0.1 x their mean per module (`damped_inverse`, bergson's default), float32 on the CPU.
One convention differs: bergson leaves each sequence's last position out of the activation
covariance (its gradient there is zero, so nothing else changes) while pretrace counts every
token. By default the runner feeds the factor fit each document with one extra token labelled
-100, which puts the last real position back in and makes the two agree to float32 rounding;
`pretrace_positions=False` keeps bergson's own convention (per-query Pearson 0.989 at worst, 0.996
on average, on the --quick shape, whose documents are 24 tokens long).

bergson's EK-FAC refuses projected gradients (`score_dataset`, `EkfacApplicator`), so "new
queries" uses its pieces the way its KFAC path does: a store of the documents' gradients, each
module's projected to p x p by bergson's own Rademacher matrices (p = the benchmark's K_OUT),
built once; then per query batch the unprojected gradients, preconditioned by bergson's EK-FAC
inverse, projected with the same matrices, and dotted with the store.

Importing this module does not import bergson; `bergson_runner` raises ImportError where bergson
or a package it imports is missing, so a caller can print nan for its figures.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import logging
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from bench.influence import BERGSON_FIGURES, median_time, parse_args
from bench.projection import compression, k_at_compression
from bench.synthetic import build_model, make_data
from pretrace.analyses.correlation import pearson
from pretrace.influence.document_gradients import compute_document_gradients
from pretrace.influence.ekfac import fit_factors
from pretrace.influence.projection import KroneckerProjection
from pretrace.influence.query_gradients import query_gradients_from_tokens
from pretrace.influence.scores import score_matrix, stream_scores
from pretrace.inputs.batching import batches
from pretrace.model.adapter import LoadedModel, wrap_model

ROOT = Path(__file__).resolve().parents[1]

FIGURES = BERGSON_FIGURES  # described in bench/influence.py, which prints them from its own run


def _import_bergson() -> None:
    """Import bergson, undoing its import-time `logging.basicConfig(level=INFO, stream=stdout,
    force=True)`, which would otherwise print every library's INFO records into stdout."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    import bergson  # noqa: F401

    root.handlers[:], root.level = handlers, level


@contextlib.contextmanager
def _quiet():
    """Swallow bergson's progress bars (stderr), replaying them if the call fails."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stderr(buffer):
            yield
    except BaseException:
        sys.stderr.write(buffer.getvalue())
        raise


def _batches(n: int, size: int) -> list[list[int]]:
    return [list(range(i, min(i + size, n))) for i in range(0, n, size)]


def bergson_runner(
    lm: LoadedModel,
    args: argparse.Namespace,
    docs: list[list[int]],
    queries: list[list[int]],
    starts: list[int],
    output_dir: str,
    *,
    pretrace_positions: bool = True,
) -> tuple[Callable[[], None], Callable[[], torch.Tensor], Callable[[], Callable[[], torch.Tensor]]]:
    """bergson on pretrace's work: `(fit, pairwise, build_store)`.

    `fit()` fits EK-FAC factors on `docs` (written under `output_dir`); `pairwise()` returns the
    (Q, N) scores of `queries` (targets from `starts[i]` on) against `docs`, query gradients
    included; `build_store()` stores the documents' projected gradients and returns
    `new_queries()`, the (Q, N) scores of the queries against that store (the part to time).
    Positive means helpful, as in pretrace. Raises ImportError without bergson.
    """
    _import_bergson()
    from bergson.collector.collector import CollectorComputer, HookCollectorBase, create_module_projection_matrix
    from bergson.collector.in_memory_collector import InMemoryCollector
    from bergson.config import HessianConfig, IndexConfig, PreprocessConfig
    from bergson.gradients import GradientProcessor
    from bergson.hessians.hessian_approximations import fit_factored_hessians
    from bergson.score.score_writer import InMemorySequenceScoreWriter
    from bergson.score.scorer import Scorer
    from datasets import Dataset

    # A model loaded by bergson has every parameter trainable; its hooks need the graph anyway.
    model = copy.deepcopy(lm.model).requires_grad_(True).eval()
    # bergson names modules inside `model.base_model` (the copy keeps the original's names).
    names = {id(module): name for name, module in lm.model.base_model.named_modules()}
    targets = {names[id(layer.module)] for layer in lm.layers}
    cfg = IndexConfig(run_path=str(Path(output_dir) / "bergson"), precision="fp32", loss_reduction="sum")
    factors_path = str(cfg.partial_run_path)
    hessian_cfg = HessianConfig(method="kfac", ev_correction=True, use_dataset_labels=True, hessian_dtype="fp32")
    B = args.batch_size

    doc_data = Dataset.from_dict({"input_ids": docs})
    if pretrace_positions:  # one trailing token without a label: the last real position is collected
        pad = lm.pad_token_id
        fit_data = Dataset.from_dict({"input_ids": [d + [pad] for d in docs], "labels": [d + [-100] for d in docs]})
    else:
        fit_data = doc_data
    query_data = Dataset.from_dict(
        {"input_ids": queries, "labels": [[-100] * s + q[s:] for q, s in zip(queries, starts)]}
    )

    def collect(data, **collector_args) -> InMemoryCollector:
        collector = InMemoryCollector(
            model=model.base_model, data=data, cfg=cfg, target_modules=targets, **collector_args
        )
        with _quiet():
            CollectorComputer(
                model, data, collector=collector, batches=_batches(len(data), B), cfg=cfg
            ).run_with_collector_hooks()
        return collector

    def preconditioned_queries() -> dict[str, torch.Tensor]:
        """Query gradients with bergson's EK-FAC inverse applied as they are built."""
        ekfac = PreprocessConfig(hessian_path=factors_path, ev_correction=True)
        return collect(query_data, processor=GradientProcessor(), preprocess_cfg=ekfac).gradients

    def fit() -> None:
        cfg.partial_run_path.mkdir(parents=True, exist_ok=True)
        with _quiet():
            fit_factored_hessians(
                model,
                fit_data,
                cfg,
                hessian_cfg,
                target_modules=targets,
                attention_cfgs={},
                batches=_batches(len(fit_data), B),
                path=factors_path,
                do_eigendecomposition=True,
            )

    def pairwise() -> torch.Tensor:
        grads = preconditioned_queries()
        writer = InMemorySequenceScoreWriter(len(docs), len(queries))
        scorer = Scorer(grads, list(grads), writer, torch.device("cpu"), torch.float32)
        collect(doc_data, processor=GradientProcessor(), scorer=scorer)
        return writer.scores.T.contiguous()

    def build_store() -> Callable[[], torch.Tensor]:
        p, seed = peer_projection(lm, args), args.seed
        processor = GradientProcessor(projection_dim=p, projection_seed=seed)
        store = collect(doc_data, processor=processor).gradients
        shapes = {name: info[1] for name, info in HookCollectorBase.discover_targets(model.base_model, targets).items()}
        matrices = {
            name: tuple(
                create_module_projection_matrix(
                    name,
                    side,
                    p,
                    dim,
                    torch.float32,
                    torch.device("cpu"),
                    processor.projection_type,
                    processor.projection_scale,
                    seed,
                )
                for side, dim in (("left", o), ("right", i))
            )
            for name, (o, i) in shapes.items()
        }

        def new_queries() -> torch.Tensor:
            scores = torch.zeros(len(queries), len(docs))
            for name, grads in preconditioned_queries().items():
                left, right = matrices[name]
                projected = left @ grads.view(-1, *shapes[name]) @ right.T  # (Q, p, p)
                scores += projected.flatten(1) @ store[name].T
            return scores

        return new_queries

    return fit, pairwise, build_store


def peer_projection(lm: LoadedModel, args: argparse.Namespace) -> int:
    """The k of bergson's (k, k) float32 store: the largest no bigger than pretrace's store (its
    projection, `stored_gradient_dtype` and `document_rank`), so both answer new queries from the
    same bytes (a Rademacher store has no quantized or factored form)."""
    shapes = lm.layer_shapes()
    pretrace_ratio = compression(shapes, args.projection[0], args.stored_dtype, args.document_rank)
    return k_at_compression(shapes, "float32", pretrace_ratio)


def _timed(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Median time of `fn` and its last result."""
    results = []
    seconds, _ = median_time(lambda: results.append(fn()), repeats)
    return seconds, results[-1]


def bergson_figures(
    lm: LoadedModel,
    args: argparse.Namespace,
    docs: list[list[int]],
    queries: list[list[int]],
    starts: list[int],
    exact: torch.Tensor,
    pretrace_seconds: dict[str, float],
    log: Callable[..., None] = print,
    *,
    pretrace_positions: bool = True,
) -> dict[str, float]:
    """`FIGURES` for bergson on the same work as pretrace, whose times in this run are
    ``pretrace_seconds`` (`factors`, `pairwise` with its query gradients, `new_queries` against
    its store) and whose exact scores are ``exact``; nan where bergson is not importable."""
    results = dict.fromkeys(FIGURES, float("nan"))
    B = args.batch_size
    with tempfile.TemporaryDirectory(prefix="bench-bergson-") as out:
        try:

            def runner(d, q, s):
                return bergson_runner(lm, args, d, q, s, out, pretrace_positions=pretrace_positions)

            warm = runner(docs[: 2 * B], queries[:B], starts[:B])
        except ImportError as error:
            log(f"bergson is not importable ({error}): its figures are nan")
            return results
        warm[0](), warm[1](), warm[2]()()  # warm-up: every path once on a small slice
        fit, pairwise, build_store = runner(docs, queries, starts)
        t_fit, _ = _timed(fit, args.slow_repeats)
        t_pair, theirs = _timed(pairwise, args.repeats)
        t_new, projected = _timed(build_store(), args.repeats)
    results["bergson_pearson"] = min(pearson(theirs[i], exact[i]) for i in range(len(queries)))
    results["bergson_projected_pearson"] = statistics.mean(pearson(projected[i], exact[i]) for i in range(len(queries)))
    results["bergson_vs_pretrace_factors"] = t_fit / pretrace_seconds["factors"]
    results["bergson_vs_pretrace_pairwise"] = t_pair / pretrace_seconds["pairwise"]
    results["bergson_vs_pretrace_new_queries"] = t_new / pretrace_seconds["new_queries"]
    log(
        f"bergson: fit {t_fit:.2f} s, pairwise {t_pair:.2f} s, new queries {t_new:.2f} s; relative error of its "
        f"pairwise scores against pretrace's {float((theirs - exact).norm() / exact.norm()):.1e}"
    )
    return results


def main(argv: list[str] | None = None) -> int:
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument(
        "--bergson-positions",
        action="store_true",
        help="keep bergson's convention of leaving each sequence's last position out of the "
        "activation covariance (default: match pretrace's)",
    )
    flags, rest = own.parse_known_args(argv)
    args = parse_args(rest)
    torch.set_num_threads(args.threads)
    lm = wrap_model(build_model(args), None, layers=["mlp"], device="cpu")
    docs, queries, starts = make_data(args)
    B, ids = args.batch_size, [str(i) for i in range(len(queries))]
    # Warm-up: pretrace's paths once on a small slice.
    few = docs[: 2 * B]
    warm_factors = fit_factors(lm, lambda: (b for _, b in batches(few, B, 0)), fisher="empirical")
    stream_scores(
        lm,
        query_gradients_from_tokens(lm, warm_factors, queries[:B], starts[:B], ids[:B], batch_size=B),
        few,
        batch_size=B,
    )
    t_fit, factors = _timed(
        lambda: fit_factors(lm, lambda: (b for _, b in batches(docs, B, 0)), fisher="empirical"), args.slow_repeats
    )
    t_pair, exact = _timed(
        lambda: stream_scores(
            lm, query_gradients_from_tokens(lm, factors, queries, starts, ids, batch_size=B), docs, batch_size=B
        ),
        args.repeats,
    )
    proj = KroneckerProjection.build(
        lm.layer_shapes(), *args.projection, seed=args.seed, basis=args.projection_basis, factors=factors
    )
    stored = compute_document_gradients(
        lm,
        docs,
        [str(i) for i in range(len(docs))],
        projection=proj,
        batch_size=B,
        rank=args.document_rank,
        stored_dtype=args.stored_dtype,
    )
    t_new, _ = _timed(
        lambda: score_matrix(
            query_gradients_from_tokens(lm, factors, queries, starts, ids, projection=proj, batch_size=B), stored
        ),
        args.repeats,
    )
    print(f"pretrace: fit {t_fit:.2f} s, pairwise {t_pair:.2f} s, new queries {t_new:.2f} s")
    results = bergson_figures(
        lm,
        args,
        docs,
        queries,
        starts,
        exact,
        {"factors": t_fit, "pairwise": t_pair, "new_queries": t_new},
        pretrace_positions=not flags.bergson_positions,
    )
    for name in FIGURES:
        print(f"{name}: {results[name]:.6g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
