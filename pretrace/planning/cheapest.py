"""The cheapest setting a study can run with on a target, by estimated time, or a refusal that names
the setting that would let it run.

The choice is among layer groups, batch size (the asked one and its halves), activation
checkpointing and the stored gradients' precision (the asked one and narrower), subject to every
step's device and host memory and the study's disk (`targets.Target`). Time comes from
`study_cost.study_estimate`: each layer group repeats every pass and checkpointing recomputes
forwards, while the batch size and the store's precision cost nothing per token. Layer groups
are counted per pass: `layer_groups` for the EK-FAC fitting chain (covariances, eigenbasis,
eigenvalue corrections), and each scoring pass (query gradients, document gradients) its own count
(`Workload.groups_of`), since they hold other tensors (with a projection, the scoring pass holds the
kept eigenvectors only). So the cheapest setting has, for each batch size and checkpointing, the
fewest fitting groups whose steps fit and each scoring pass in the fewest groups its own step fits
in, and ties go to the larger batch, fewer groups, no checkpointing, then the more precise store
(`order`). `cheapest` searches that way; `cheapest_by_enumeration` tries every setting of the same
grid, and exists to check it (`bench/scale.py`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, replace

from pretrace.errors import InputError
from pretrace.planning.measured_rates import MeasuredRates
from pretrace.planning.memory_plan import GB, SCORING_GROUPS, ModelShape, Plan, Step, Workload, plan
from pretrace.planning.study_cost import Estimate, extra_steps, study_estimate
from pretrace.planning.targets import Target

STORE_DTYPES = ("float32", "bfloat16", "int8", "int4")
"""Stored gradient precisions, most precise first: the chooser never picks a wider one than asked."""

FITTING_STEPS = ("covariances", "lambdas")
"""Steps that write their sums once per fit shard."""

FITTING_CHAIN = ("covariances", "eigenbasis", "lambdas")
"""The steps `layer_groups` partitions; the scoring steps take their own counts (`SCORING_GROUPS`)."""

SCORING_STAGES = {"query_gradients": "query gradients", "scores": "document gradients"}
"""Each scoring step's stage of the estimate (`study_cost.STAGES`)."""


def batch_sizes(work: Workload) -> list[int]:
    """The asked batch size and its halves down to 1."""
    return [work.batch_size >> k for k in range(work.batch_size.bit_length())]


def store_dtypes(work: Workload) -> list[str]:
    return list(STORE_DTYPES[STORE_DTYPES.index(work.stored_gradient_dtype) :])


def grid(shape: ModelShape, work: Workload) -> list[Workload]:
    """Every setting the chooser may pick for ``work``."""
    return [
        setting(work, groups, batch, checkpointed, dtype)
        for groups, batch, checkpointed, dtype in itertools.product(
            range(1, len(shape.layers) + 1), batch_sizes(work), (False, True), store_dtypes(work)
        )
    ]


def setting(work: Workload, groups: int, batch: int, checkpointed: bool, dtype: str) -> Workload:
    """``work`` with these settings; more than one group runs as separate steps (`layer_groups` set)."""
    return replace(
        work,
        layer_groups=groups,
        batch_size=batch,
        activation_checkpointing=checkpointed,
        stored_gradient_dtype=dtype,
        partitioned_groups=groups > 1,
    )


def study_disk(shape: ModelShape, work: Workload, fit_shards: int = 1) -> int:
    """Bytes the whole study writes: every step's artefacts, the fitting sums once per fit shard.
    The same for any grouping, batch size and checkpointing, so planned once for each other setting."""
    same = replace(
        work,
        layer_groups=1,
        query_groups=None,
        document_groups=None,
        partitioned_groups=False,
        batch_size=1,
        activation_checkpointing=False,
    )
    key = (shape.parameters, shape.blocks, shape.hidden, shape.vocab, tuple(shape.layers.items()), same, fit_shards)
    if key not in _DISKS:
        whole = plan(shape, same)
        _DISKS[key] = sum(step.disk * (fit_shards if step.name in FITTING_STEPS else 1) for step in whole.steps)
    return _DISKS[key]


_DISKS: dict[tuple, int] = {}


@dataclass(frozen=True)
class Assessed:
    """One setting: its plan, time, disk, and the budgets it exceeds."""

    work: Workload
    plan: Plan
    estimate: Estimate
    disk: int
    problems: tuple[str, ...]  # among "device", "host", "disk"

    @property
    def feasible(self) -> bool:
        return not self.problems


def order(work: Workload, estimate: Estimate) -> tuple:
    """Cheapest first; among equal times the larger batch, fewer groups, no checkpointing, the more precise store."""
    return (
        round(estimate.gpu_hours, 9),
        -work.batch_size,
        work.layer_groups,
        *(work.groups_of(step) for step in SCORING_GROUPS),
        work.activation_checkpointing,
        STORE_DTYPES.index(work.stored_gradient_dtype),
    )


def memory_problems(planned: Plan, target: Target, steps: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """The budgets that the plan's steps (those named in ``steps``; all without) exceed."""
    checked = [step for step in planned.steps if steps is None or step.name in steps]
    device = any(step.device > target.device_bytes for step in checked)
    host = target.host_bytes is not None and any(step.host > target.host_bytes for step in checked)
    return (*(["device"] if device else []), *(["host"] if host else []))


def fits_target(target: Target) -> Callable[[Step], bool]:
    return lambda step: not memory_problems(Plan([step]), target)


def assess(shape: ModelShape, work: Workload, target: Target, rates: MeasuredRates, fit_shards: int = 1) -> Assessed:
    planned, disk = plan(shape, work), study_disk(shape, work, fit_shards)
    problems = (*memory_problems(planned, target), *(["disk"] if disk > target.disk_bytes else []))
    return Assessed(work, planned, study_estimate(shape, work, rates, target.gpus), disk, problems)


def cheapest_by_enumeration(
    shape: ModelShape, work: Workload, target: Target, rates: MeasuredRates, fit_shards: int = 1
) -> Assessed | None:
    """Every setting of `grid`, each with every count of query and document groups, assessed; the
    first by `order` of those that fit (None if none does).

    The scoring counts are enumerated one beside the other, not as a product with the grid (a 7B's
    96 MLP layers would make that 96 x 96 times the grid): each count changes only its own step's
    plan and its own stage's time (`Workload.groups_of`), which depend on nothing else of the grid
    but the batch size, checkpointing and store; and each budget bounds every step alone. So over
    the product the least (time, count) of each scoring count is the same whatever the rest of the
    setting, and is found here by trying every count, without `cheapest`'s premise that more
    groups take longer."""
    scoring: dict[tuple, dict[str, int] | None] = {}
    feasible = []
    for tried in grid(shape, work):
        key = (tried.batch_size, tried.activation_checkpointing, tried.stored_gradient_dtype)
        if key not in scoring:
            scoring[key] = _least_scoring_groups(shape, tried, target, rates)
        if scoring[key] is not None:
            assessed = assess(shape, replace(tried, **scoring[key]), target, rates, fit_shards)
            feasible += [assessed] if assessed.feasible else []
    return min(feasible, key=lambda a: order(a.work, a.estimate), default=None)


def _least_scoring_groups(
    shape: ModelShape, work: Workload, target: Target, rates: MeasuredRates
) -> dict[str, int] | None:
    """Each scoring pass's count of groups of least (stage time, count) among those whose step fits."""
    counts = {}
    for step, own in SCORING_GROUPS.items():
        timed = [
            (round(study_estimate(shape, tried, rates).seconds[SCORING_STAGES[step]], 9), groups)
            for groups, tried in ((g, replace(work, **{own: g})) for g in range(1, len(shape.layers) + 1))
            if not memory_problems(plan(shape, tried), target, (step,))
        ]
        if not timed:
            return None
        counts[own] = min(timed)[1]
    return counts


def fewest_groups(
    shape: ModelShape, work: Workload, fits: Callable[[Step], bool], step: str = "covariances"
) -> Workload | None:
    """``work`` with ``step``'s pass in the fewest layer groups whose steps ``fit`` (time grows with
    groups), or None: `layer_groups` for a fitting step (the whole chain checked), else the scoring
    step's own count (`SCORING_GROUPS`)."""
    own = SCORING_GROUPS.get(step)
    checked = (step,) if own else FITTING_CHAIN
    for groups in range(1, len(shape.layers) + 1):
        if own:
            tried = replace(work, **{own: groups})
        else:
            tried = setting(work, groups, work.batch_size, work.activation_checkpointing, work.stored_gradient_dtype)
        if all(fits(planned) for planned in plan(shape, tried).steps if planned.name in checked):
            return tried
    return None


def fewest_scoring_groups(shape: ModelShape, work: Workload, fits: Callable[[Step], bool]) -> Workload | None:
    """``work`` with each scoring pass in the fewest groups whose step ``fits``, or None."""
    for step in SCORING_GROUPS:
        if (work := fewest_groups(shape, work, fits, step)) is None:
            return None
    return work


def _fitting(shape: ModelShape, work: Workload, fits: Callable[[Step], bool]) -> list[Workload]:
    """For each batch size and checkpointing, the fewest fitting groups and the fewest of each scoring
    pass that fit: the only settings that can be cheapest."""
    found = (
        fewest_groups(shape, setting(work, 1, batch, checkpointed, work.stored_gradient_dtype), fits)
        for batch, checkpointed in itertools.product(batch_sizes(work), (False, True))
    )
    scored = (fewest_scoring_groups(shape, tried, fits) for tried in found if tried is not None)
    return [tried for tried in scored if tried is not None]


def cheapest(shape: ModelShape, work: Workload, target: Target, rates: MeasuredRates, fit_shards: int = 1) -> Assessed:
    """The cheapest setting that fits ``target`` (module docstring); `InputError` naming the setting
    that would let the study run when none does."""
    dtype = next(
        (
            d
            for d in store_dtypes(work)
            if study_disk(shape, replace(work, stored_gradient_dtype=d), fit_shards) <= target.disk_bytes
        ),
        None,
    )
    if dtype is None:
        raise InputError(_disk_refusal(shape, work, target, fit_shards))
    fitting = _fitting(shape, replace(work, stored_gradient_dtype=dtype), fits_target(target))
    if not fitting:
        raise InputError(_memory_refusal(shape, work, target))
    estimates = {id(w): study_estimate(shape, w, rates, target.gpus) for w in fitting}
    best = min(fitting, key=lambda w: order(w, estimates[id(w)]))
    return Assessed(best, plan(shape, best), estimates[id(best)], study_disk(shape, best, fit_shards), ())


def fitting_plan(shape: ModelShape, work: Workload, device_bytes: int) -> tuple[Plan, Workload]:
    """The cheapest setting of ``work`` whose every step fits ``device_bytes`` (layer groups, batch
    size, checkpointing), with no rates: ordered by the `extra_steps` of the fitting passes, then of
    the document pass (each stage's time is an increasing function of its own, whatever the rates;
    fitting costs many training steps a token at every measured rate, scoring about one).
    `InputError` when nothing fits, with the plan of the smallest settings."""
    found = _fitting(shape, work, lambda step: step.device <= device_bytes)
    if not found:
        smallest = plan(shape, setting(work, len(shape.layers), 1, True, work.stored_gradient_dtype))
        raise InputError(
            f"the run needs {smallest.peak.device / GB:.3g} GB of device memory at its smallest settings "
            f"(batch_size 1, layer_groups {len(shape.layers)}, activation_checkpointing) but the device has "
            f"{device_bytes / GB:.3g} GB; track fewer layers, shorten max_length, set factor_block_size for "
            f"the widest layers, or use a larger device\n{smallest.table()}"
        )
    best = min(
        found,
        key=lambda w: (
            round(extra_steps(w), 9),
            round(extra_steps(w, "scores"), 9),
            -w.batch_size,
            w.layer_groups,
            w.activation_checkpointing,
        ),
    )
    return plan(shape, best), best


def settings_lines(chosen: Workload) -> str:
    """The settings the chooser picks, as pretrace.yaml lines (the scoring passes' groups beside
    `layer_groups`: the run chooses those itself), and the factor_block_size the plan assumes when
    one is set (not chosen: it changes the factors, not only their cost)."""
    keys = ("batch_size", "activation_checkpointing", "stored_gradient_dtype")
    keys += ("factor_block_size",) if chosen.factor_block_size is not None else ()
    groups = f"layer_groups: {chosen.layer_groups} (fitting; {scoring_groups_line(chosen)})"
    return ", ".join([groups, *(f"{key}: {str(getattr(chosen, key)).lower()}" for key in keys)])


def scoring_groups_line(work: Workload) -> str:
    """The scoring passes' layer groups, in words."""
    query, documents = (work.groups_of(step) for step in SCORING_GROUPS)
    if query == documents:
        return f"the scoring passes in {query} group{'s' if query != 1 else ''}"
    return f"query gradients in {query} group{'s' if query != 1 else ''}, document gradients in {documents}"


def _memory_refusal(shape: ModelShape, work: Workload, target: Target) -> str:
    smallest = plan(shape, setting(work, len(shape.layers), 1, True, work.stored_gradient_dtype))
    device = max(smallest.steps, key=lambda step: step.device)
    if device.device > target.device_bytes:
        return (
            f"the {device.name} step needs {device.device / GB:.3g} GB of device memory at its smallest settings "
            f"(batch_size: 1, layer_groups: {len(shape.layers)}, activation_checkpointing: true) but {target.name} has "
            f"{target.device_bytes / GB:.3g} GB; {'' if work.factor_block_size else 'set factor_block_size for the widest layers, '}"
            "shorten max_length, track fewer layers (layers:), or plan for a larger --gpu"
        )
    host = max(smallest.steps, key=lambda step: step.host)
    return (
        f"the {host.name} step needs {host.host / GB:.3g} GB of host memory at its least (layer_groups: "
        f"{len(shape.layers)}) but --host-memory gives {target.host_bytes / GB:.3g} GB; give the step pods at least "
        f"{host.host / GB:.3g} GB (--host-memory), or track fewer layers (layers:)"
    )


def _disk_refusal(shape: ModelShape, work: Workload, target: Target, fit_shards: int) -> str:
    """The largest square projection whose store fits the disk in the asked precision."""
    need = study_disk(shape, replace(work, stored_gradient_dtype=STORE_DTYPES[-1]), fit_shards)
    widest = max(side for layer in shape.layers.values() for side in layer)
    lo, hi = 0, widest  # the largest k in [0, widest] whose store fits: bisection (the store grows with k)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        fits = study_disk(shape, replace(work, projection=(mid, mid)), fit_shards) <= target.disk_bytes
        lo, hi = (mid, hi) if fits else (lo, mid - 1)
    said = f"the study writes {need / 1e12:.3g} TB even with stored_gradient_dtype: int4 but --disk gives {target.disk_bytes / 1e12:.3g} TB"
    if lo == 0:
        return f"{said}; its factors and scores alone do not fit: give it more disk (--disk)"
    return (
        f"{said}; set projection: [{lo}, {lo}] in pretrace.yaml (the largest that fits at stored_gradient_dtype: "
        f"{work.stored_gradient_dtype}; or a smaller one, or document_rank), or give it more disk (--disk)"
    )
