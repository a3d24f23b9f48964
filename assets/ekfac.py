"""EK-FAC fitting as map-reduce over the fit shards.

ekfac_covariances[shard] -> ekfac_eigenbasis -> ekfac_lambdas[shard] -> ekfac_factors. The
per-shard states are sums, so the reductions add them up and nothing is fitted twice. Only the
fit shards (`fit_shards`, all current shards by default) have per-shard EK-FAC partitions; a
request for another shard fails with the list of fit shards.
"""

import time
from functools import reduce
from typing import Callable

import dagster as dg

from pretrace.batching import batches
from pretrace.computation import Computation
from pretrace.ekfac import CovarianceState, LambdaState, eigenbasis, fit_covariances, fit_lambdas, make_factors
from pretrace.layer_groups import by_layer_group
from pretrace.model import resolve_device
from resources.pretrace import PretraceResource

from .common import GPU_ASSET, RETRY, computing, materialized, progress_logger
from .corpus import corpus_shards
from .partitions import PER_SHARD

FITTING = {**PER_SHARD, "group_name": "ekfac", **GPU_ASSET, "kinds": {"pytorch", "safetensors"}, "retry_policy": RETRY}


def _shard_pass(context: dg.AssetExecutionContext, pretrace: PretraceResource, what: str,
                fit: Callable, join: Callable) -> dg.MaterializeResult:
    """One fitting pass over a fit shard's documents per layer group, the groups' states joined."""
    started = time.monotonic()
    with computing(context, pretrace) as run:
        config = run.project.config
        lm = run.model()
        groups = run.layer_groups(lm)
        sequences = run.reader("corpus_shards", run.shard).table("{shard}.parquet", ["input_ids"]).column("input_ids").to_pylist()
        progress = progress_logger(context, len(sequences) * groups, f"{what} of {run.shard}")
        state = by_layer_group(lm, groups, lambda group: fit(
            run, group, (b for _, b in batches(sequences, config.batch_size, lm.pad_token_id)), progress), join)
        manifest = run.commit({"{shard}.safetensors": state})
    return materialized(run, manifest, started, documents=len(sequences), layer_groups=groups)


def _summed(run: Computation, name: str):
    """The per-shard states of `name` over the fit shards, added up."""
    return reduce(lambda x, y: x.merge(y), (run.reader(name, s).state() for s in run.project.fit_shards))


@dg.asset(deps=[corpus_shards, "model"], **FITTING)
def ekfac_covariances(context: dg.AssetExecutionContext, pretrace: PretraceResource) -> dg.MaterializeResult:
    """Per-shard sums of A = sum a a^T and S = sum g g^T per tracked layer, with token counts."""
    return _shard_pass(context, pretrace, "covariances", lambda run, lm, data, progress: fit_covariances(
        lm, data, run.project.config.fisher, run.project.config.seed, progress), CovarianceState.join)


@dg.asset(deps=[ekfac_covariances], group_name="ekfac", kinds={"safetensors"}, retry_policy=RETRY, **GPU_ASSET)
def ekfac_eigenbasis(context: dg.AssetExecutionContext, pretrace: PretraceResource) -> dg.MaterializeResult:
    """Summed covariances, eigendecomposed in float64 on the device (a matrix at a time)."""
    started = time.monotonic()
    with computing(context, pretrace) as run:
        covariances = _summed(run, "ekfac_covariances")
        basis = eigenbasis(covariances, resolve_device(run.project.config.device))
        manifest = run.commit({"eigenbasis.safetensors": basis})
    return materialized(run, manifest, started, tokens=covariances.n_tokens, documents=covariances.n_examples,
                        layers=len(basis.QA), fit_shards=dg.MetadataValue.json(run.project.fit_shards))


@dg.asset(deps=[ekfac_eigenbasis, corpus_shards, "model"], **FITTING)
def ekfac_lambdas(context: dg.AssetExecutionContext, pretrace: PretraceResource) -> dg.MaterializeResult:
    """Per-shard sums of the eigenvalue correction (Q_S^T dW Q_A)^2 over documents."""
    return _shard_pass(context, pretrace, "eigenvalue corrections", lambda run, lm, data, progress: fit_lambdas(
        lm, run.reader("ekfac_eigenbasis").state(), data, run.project.config.fisher, run.project.config.seed,
        progress), LambdaState.join)


@dg.asset(deps=[ekfac_lambdas, ekfac_eigenbasis], group_name="ekfac", kinds={"safetensors"}, retry_policy=RETRY)
def ekfac_factors(context: dg.AssetExecutionContext, pretrace: PretraceResource) -> dg.MaterializeResult:
    """The preconditioner: eigenbasis, averaged corrected eigenvalues and per-layer damping."""
    started = time.monotonic()
    with computing(context, pretrace) as run:
        lambdas = _summed(run, "ekfac_lambdas")
        factors = make_factors(run.reader("ekfac_eigenbasis").state(), lambdas, run.project.config.damping)
        manifest = run.commit({"factors.safetensors": factors})
    damping = "\n".join(f"- `{name}`: {value:.3g}" for name, value in factors.damping.items())
    return materialized(run, manifest, started, documents=lambdas.n_examples, damping=dg.MetadataValue.md(damping))
