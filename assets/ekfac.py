"""EK-FAC fitting as map-reduce over the fit shards (and layer groups).

ekfac_covariances[shard] -> ekfac_eigenbasis -> ekfac_lambdas[shard] -> ekfac_factors. The
per-shard states are sums, so the reductions add them up and nothing is fitted twice. Only the
fit shards (`fit_shards`, all current shards by default) have per-shard EK-FAC partitions; a
request for another shard fails with the list of fit shards. With `layer_groups` > 1 the first
three are partitioned by layer group too (layers are independent in EK-FAC), and
`ekfac_factors` joins the groups: the same bytes as one group.
"""

import time
from collections.abc import Callable
from functools import cache, partial, reduce
from typing import Any

import dagster as dg

from pretrace.errors import InputError
from pretrace.influence.distributed import SINGLE, Ranks
from pretrace.influence.ekfac import (
    CovarianceState,
    Eigenbasis,
    LambdaState,
    eigenbasis,
    fit_covariances,
    fit_lambdas,
    make_factors,
)
from pretrace.influence.layer_groups import by_layer_group
from pretrace.inputs.batching import batches
from pretrace.inputs.fit_sample import in_sample, sample_threshold
from pretrace.model.adapter import resolve_device
from pretrace.project.artefacts import partition_key
from pretrace.project.computation import Computation
from pretrace.resources.pretrace import PretraceResource

from .checks import check_specs
from .common import GPU_ASSET, RETRY, computing, materialized, progress_logger
from .partitions import GROUP, SHARD, group_partitions, shard_and_group_partitions, shard_partitions
from .torchrun import Progresses, stepped_under_torchrun

FITTING = {**GPU_ASSET, "retry_policy": RETRY}
EKFAC = {"group_name": "ekfac", "kinds": {"pytorch", "safetensors"}}


def _shard_pass(context: dg.AssetExecutionContext, pretrace: PretraceResource, name: str) -> dg.MaterializeResult:
    """A fitting pass of this partition (`shard_pass_state`), under torchrun with `gpus_per_step` > 1."""
    started = time.monotonic()
    with computing(context, pretrace) as run:
        if run.project.config.gpus_per_step > 1:
            return stepped_under_torchrun(context, pretrace, run, started)
        state, metadata = shard_pass_state(run, name, partial(progress_logger, context))
        manifest = run.commit({"{shard}.safetensors": state})
    return materialized(run, manifest, started, **metadata)


def shard_pass_state(
    run: Computation, name: str, progresses: Progresses, ranks: Ranks = SINGLE
) -> tuple[Any, dict[str, Any]]:
    """One fitting pass (`SHARD_PASSES[name]`) over a fit shard's documents per layer group, the
    groups' states joined (or over one group's layers, for a partition of one layer group), and
    its description; under torch.distributed each rank passes over its share of the batches and
    every rank gets the summed state."""
    what, fit, join = SHARD_PASSES[name]
    config = run.project.config
    full = run.model()
    groups = run.layer_groups(full)
    lm = run.group_model(full)
    sequences = _fit_sequences(run)
    progress = progresses(len(sequences) * groups, f"{what} of {run.label}")
    state = by_layer_group(
        lm,
        groups,
        lambda group: fit(
            run, group, (b for _, b in batches(sequences, config.batch_size, lm.pad_token_id)), progress, ranks
        ),
        join,
    )
    return state, {"documents": len(sequences), "layer_groups": groups, "layers": len(lm.layers)}


def _doc_ids(run: Computation, shard: str) -> list[str]:
    return run.reader("corpus_shards", shard).table("{shard}.parquet", ["doc_id"]).column("doc_id").to_pylist()


def _fit_sequences(run: Computation) -> list[list[int]]:
    """The token ids of the shard's documents in the fit sample (`fit_documents`), in file order."""
    config = run.project.config
    ids = ((shard, _doc_ids(run, shard)) for shard in run.project.fit_shards)  # read for a count only
    keep = in_sample(
        config.seed, run.shard, _doc_ids(run, run.shard), sample_threshold(config.fit_documents, config.seed, ids)
    )
    table = run.reader("corpus_shards", run.shard).table("{shard}.parquet", ["input_ids"])
    return [tokens for tokens, kept in zip(table.column("input_ids").to_pylist(), keep, strict=True) if kept]


def _summed(run: Computation, name: str, group: str | None) -> Any:
    """The per-shard states of `name` (of one layer group) over the fit shards, added up."""
    return reduce(
        lambda x, y: x.merge(y), (run.reader(name, partition_key(s, group)).state() for s in run.project.fit_shards)
    )


def _covariances(context: dg.AssetExecutionContext, pretrace: PretraceResource) -> dg.MaterializeResult:
    return _shard_pass(context, pretrace, "ekfac_covariances")


def _fit_covariances(run: Computation, lm, data, progress, ranks: Ranks) -> CovarianceState:
    config = run.project.config
    return fit_covariances(lm, data, config.fisher, config.seed, progress, config.factor_block_size, ranks)


def _eigenbasis(context: dg.AssetExecutionContext, pretrace: PretraceResource) -> dg.MaterializeResult:
    started = time.monotonic()
    with computing(context, pretrace) as run:
        covariances = _summed(run, "ekfac_covariances", run.group)
        config = run.project.config
        if covariances.n_examples == 0:
            raise InputError(
                f"fit_documents: the sample of {config.fit_documents} holds no document of the fit shards; raise it"
            )
        basis = eigenbasis(covariances, resolve_device(config.device), config.factor_block_size)
        (file,) = run.artefact.files
        manifest = run.commit({file: basis})
    return materialized(
        run,
        manifest,
        started,
        tokens=covariances.n_tokens,
        documents=covariances.n_examples,
        layers=len(basis.QA),
        fit_shards=dg.MetadataValue.json(run.project.fit_shards),
    )


def _lambdas(context: dg.AssetExecutionContext, pretrace: PretraceResource) -> dg.MaterializeResult:
    return _shard_pass(context, pretrace, "ekfac_lambdas")


def _fit_lambdas(run: Computation, lm, data, progress, ranks: Ranks) -> LambdaState:
    config = run.project.config
    basis = run.reader("ekfac_eigenbasis", run.group).state()
    return fit_lambdas(lm, basis, data, config.fisher, config.seed, progress, ranks, config.factor_block_size)


SHARD_PASSES: dict[str, tuple[str, Callable, Callable]] = {
    "ekfac_covariances": ("covariances", _fit_covariances, CovarianceState.join),
    "ekfac_lambdas": ("eigenvalue corrections", _fit_lambdas, LambdaState.join),
}
"""Each per-shard fitting artefact: what its pass is called, its fit, and how groups join."""


@cache
def fitting_assets(layer_groups: int) -> tuple[dg.AssetsDefinition, ...]:
    """ekfac_covariances, ekfac_eigenbasis and ekfac_lambdas, partitioned by shard (the two
    passes) and, with more than one layer group, by group too: eigenbasis[group] reads its
    group's covariances of every fit shard, lambdas[shard, group] its group's eigenbasis. Ops of
    the grouped assets are named for their group count (a compared model may use another);
    one count's assets are built once, as Dagster allows one op definition per name."""
    grouped = layer_groups > 1
    by_shard = shard_and_group_partitions(layer_groups) if grouped else shard_partitions

    def same(dimension):
        return dg.MultiToSingleDimensionPartitionMapping(dimension) if grouped else None

    def asset(
        name: str,
        compute: Callable,
        description: str,
        deps: list[dg.AssetDep],
        partitions: dg.PartitionsDefinition | None,
    ) -> dg.AssetsDefinition:
        spec = dg.AssetSpec(name, deps=deps, description=description, **EKFAC)

        @dg.multi_asset(
            name=f"{name}_in_{layer_groups}_groups" if grouped else name,
            specs=[spec],
            partitions_def=partitions,
            required_resource_keys={"pretrace"},
            backfill_policy=dg.BackfillPolicy.multi_run(1) if partitions else None,
            **FITTING,
        )
        def materialize(context):  # unannotated: Dagster inspects annotations, which this module postpones
            return compute(context, context.resources.pretrace)

        return materialize

    corpus = dg.AssetDep("corpus_shards", partition_mapping=same(SHARD))
    return (
        asset(
            "ekfac_covariances",
            _covariances,
            "Per-shard sums of A = sum a a^T and S = sum g g^T per tracked layer, with token counts.",
            [corpus, dg.AssetDep("model")],
            by_shard,
        ),
        asset(
            "ekfac_eigenbasis",
            _eigenbasis,
            "Summed covariances, eigendecomposed in float64 on the device (a matrix at a time).",
            [dg.AssetDep("ekfac_covariances", partition_mapping=same(GROUP))],
            group_partitions(layer_groups) if grouped else None,
        ),
        asset(
            "ekfac_lambdas",
            _lambdas,
            "Per-shard sums of the eigenvalue correction (Q_S^T dW Q_A)^2 over documents.",
            [dg.AssetDep("ekfac_eigenbasis", partition_mapping=same(GROUP)), corpus, dg.AssetDep("model")],
            by_shard,
        ),
    )


ekfac_covariances, ekfac_eigenbasis, ekfac_lambdas = fitting_assets(1)


@dg.asset(
    deps=[ekfac_lambdas, ekfac_eigenbasis],
    group_name="ekfac",
    kinds={"safetensors"},
    retry_policy=RETRY,
    check_specs=check_specs("ekfac_factors"),
)
def ekfac_factors(context: dg.AssetExecutionContext, pretrace: PretraceResource) -> dg.MaterializeResult:
    """The preconditioner: eigenbasis, averaged corrected eigenvalues and per-layer damping (the
    layer groups' joined)."""
    started = time.monotonic()
    with computing(context, pretrace) as run:
        groups = run.project.groups or [None]
        lambdas = LambdaState.join([_summed(run, "ekfac_lambdas", group) for group in groups])
        basis = Eigenbasis.join([run.reader("ekfac_eigenbasis", group).state() for group in groups])
        factors = make_factors(basis, lambdas, run.project.config.damping)
        manifest = run.commit({"factors.safetensors": factors})
    damping = "\n".join(f"- `{name}`: {value:.3g}" for name, value in factors.damping.items())
    return materialized(run, manifest, started, documents=lambdas.n_examples, damping=dg.MetadataValue.md(damping))
