"""How many GPU-hours each stage of a study takes, from measured rates (`measured_rates`).

Every stage is counted in training steps of the model under study, whose rate is derived from
the measured card's by FLOPs (`MeasuredRates.train_tokens_per_s_at`):

- fitting, covariances and eigenvalue corrections: the measured ratio of both passes to a
  training step, per token of the fitting sample (`fit_documents`), split evenly between the two
  passes (the bench times them together);
- document gradients (and scores): tokens of every document at the measured scoring ratio;
- each layer group after the first repeats a pass's forward and backward (into activations, not
  weights: 4 of a training step's 6 x parameters FLOPs, `GROUP_PASS`), and activation
  checkpointing adds a forward (2 of 6, `RECOMPUTE`) to every pass of every group; the fitting
  passes take `layer_groups`, the query and document gradients their own counts (`Workload.groups_of`);
- the eigendecomposition: the measured seconds scaled by the sum of cubed covariance sides
  (each diagonal block's with `factor_block_size`), as a dense symmetric eigensolver costs;
- query gradients: the measured seconds a query scaled by the preconditioning's FLOPs
  (d_out x d_in x (d_out + d_in) per layer), plus their group passes.

A batch size changes no estimate: the rates are per token, measured at 4096 tokens a batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from pretrace.influence.ekfac import diagonal_blocks
from pretrace.inputs.fit_sample import sampled_documents
from pretrace.planning.measured_rates import SCALE_RUN_LAYERS, SCALE_RUN_QUERIES, MeasuredRates
from pretrace.planning.memory_plan import ModelShape, Workload

GROUP_PASS = 4 / 6
RECOMPUTE = 2 / 6
HOUR = 3600.0

STAGES = ("fit covariances", "eigendecomposition", "eigenvalue corrections", "query gradients", "document gradients")


@dataclass(frozen=True)
class Estimate:
    """GPU-seconds of each stage (`STAGES`) on the target card, and the GPUs sharing them."""

    seconds: dict[str, float]
    gpus: int = 1

    @property
    def gpu_hours(self) -> float:
        return sum(self.seconds.values()) / HOUR

    @property
    def wall_hours(self) -> float:
        """With the work split over `gpus` (data parallel: each GPU a share of the documents)."""
        return self.gpu_hours / self.gpus

    def table(self) -> str:
        lines = ["estimated time (GPU-hours):"]
        lines += [f"  {stage:<24} {seconds / HOUR:>10.1f}" for stage, seconds in self.seconds.items()]
        lines.append(f"  {'whole study':<24} {self.gpu_hours:>10.1f}  ({self.gpu_hours / 24:.2f} GPU-days)")
        if self.gpus > 1:
            lines.append(f"  on {self.gpus} GPUs: {self.wall_hours:.1f} hours")
        return "\n".join(lines)


def corpus_tokens(work: Workload) -> int:
    return work.documents * (work.document_tokens or work.max_length)


def fit_tokens(work: Workload) -> int:
    return sampled_documents(work.fit_documents, work.documents) * (work.document_tokens or work.max_length)


def extra_steps(work: Workload, step: str = "covariances") -> float:
    """Training steps a token that layer groups and activation checkpointing add to one pass of
    ``step`` (a `memory_plan` step name: its groups are `Workload.groups_of`)."""
    groups = work.groups_of(step)
    return (groups - 1) * GROUP_PASS + (groups * RECOMPUTE if work.activation_checkpointing else 0.0)


@cache  # a chooser times the same layers thousands of times
def _cubes(layers: tuple[tuple[int, int], ...], block_size: int | None) -> int:
    return sum((b.stop - b.start) ** 3 for layer in layers for side in layer for b in diagonal_blocks(side, block_size))


def _preconditioning(layers: list[tuple[int, int]]) -> int:
    return sum(o * i * (o + i) for o, i in layers)


def study_estimate(shape: ModelShape, work: Workload, rates: MeasuredRates, gpus: int = 1) -> Estimate:
    """Each stage's GPU-seconds for ``work`` on ``shape`` at ``rates`` (module docstring)."""
    step = 1 / rates.train_tokens_per_s_at(shape.parameters)  # seconds of a training step, per token
    layers = tuple(shape.layers.values())
    fitting = fit_tokens(work) * step * (rates.fit_vs_train.value / 2 + extra_steps(work))
    eigen = (
        rates.eigendecomposition_seconds.value
        * _cubes(layers, work.factor_block_size)
        / _cubes(tuple(SCALE_RUN_LAYERS), None)
    )
    per_query = rates.query_gradients_seconds.value / SCALE_RUN_QUERIES
    queries = work.queries * (
        per_query * _preconditioning(layers) / _preconditioning(SCALE_RUN_LAYERS)
        + work.query_length * step * extra_steps(work, "query_gradients")
    )
    documents = corpus_tokens(work) * step * (1 / rates.score_vs_train.value + extra_steps(work, "scores"))
    return Estimate(dict(zip(STAGES, (fitting, eigen, fitting, queries, documents), strict=True)), gpus)
