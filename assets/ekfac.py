"""EK-FAC fitting as map-reduce over the fit shards.

ekfac_covariances[shard] -> ekfac_eigenbasis -> ekfac_lambdas[shard] -> ekfac_factors. The
per-shard states are sums, so the reductions add them up and nothing is fitted twice.
"""


import time
from functools import reduce
from typing import Callable

import dagster as dg

from pretrace.batching import batches
from pretrace.config import PretraceConfig
from pretrace.ekfac import CovarianceState, Eigenbasis, LambdaState, eigenbasis, fit_covariances, fit_lambdas, make_factors
from pretrace.storage import Storage
from resources.settings import ComputeResource, InfluenceResource, ModelResource, StorageResource, config_from_resources

from .common import GPU_ASSET, artefact_metadata, model_for, progress_logger, shard_key_of, shard_sequences
from .corpus import corpus_shards
from .partitions import PER_SHARD, shard_partitions

EIGENBASIS_KEY = "ekfac_eigenbasis/eigenbasis.safetensors"
FACTORS_KEY = "ekfac_factors/factors.safetensors"


def fit_shards(config: PretraceConfig, instance: dg.DagsterInstance) -> list[str]:
    """The shards factors are fitted on: `fit_shards`, or every registered shard."""
    if config.fit_shards == "all":
        return sorted(instance.get_dynamic_partitions(shard_partitions.name))
    return list(config.fit_shards)


def _skip(shard: str) -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"fitted": False, "reason": f"{shard} is not one of fit_shards"})


def _shard_pass(context, storage, influence, model_settings, compute, what: str, run: Callable) -> dg.MaterializeResult:
    """One fitting pass over a shard's documents, written as <asset>/<shard>.safetensors."""
    started = time.monotonic()
    config = config_from_resources(storage, influence, model_settings, compute)
    shard = context.partition_key
    if shard not in fit_shards(config, context.instance):
        return _skip(shard)
    store = storage.open()
    lm = model_for(store, model_settings, compute)
    _, sequences = shard_sequences(store, shard)
    data = (b for _, b in batches(sequences, config.batch_size, lm.pad_token_id))
    state = run(lm, data, config, progress_logger(context, len(sequences), f"{what} of {shard}"))
    key = shard_key_of(context.asset_key.path[-1], shard)
    store.write_tensors(key, *state.to_tensors())
    return dg.MaterializeResult(
        metadata={**artefact_metadata(store, key, started=started), "fitted": True, "documents": len(sequences)}
    )


def _reduce(context: dg.AssetExecutionContext, storage: StorageResource, influence: InfluenceResource,
            model_settings: ModelResource, compute: ComputeResource, asset: str, cls):
    """Add up the per-shard states of `asset` over the fit shards that have one.

    Returns (config, store, summed state, shards missing); warns about the missing ones.
    """
    config = config_from_resources(storage, influence, model_settings, compute)
    store = storage.open()
    shards = fit_shards(config, context.instance)
    keys = {s: shard_key_of(asset, s) for s in shards}
    present = [s for s, k in keys.items() if store.exists(k)]
    if not present:
        raise dg.Failure(f"no {asset} partition is materialized for the fit shards {shards}; materialize them first")
    missing = sorted(set(shards) - set(present))
    if missing:
        context.log.warning(f"reducing {asset} without the shards not materialized yet: {missing}")
    states = (cls.from_tensors(*store.read_tensors(keys[s])) for s in present)
    return config, store, reduce(lambda x, y: x.merge(y), states), missing


@dg.asset(**PER_SHARD, deps=[corpus_shards, "model"], group_name="ekfac", **GPU_ASSET,
          kinds={"pytorch", "safetensors"}, code_version="1")
def ekfac_covariances(context: dg.AssetExecutionContext, storage: StorageResource, influence: InfluenceResource,
                      model_settings: ModelResource, compute: ComputeResource) -> dg.MaterializeResult:
    """Per-shard sums of A = sum a a^T and S = sum g g^T per tracked layer, with token counts."""
    return _shard_pass(context, storage, influence, model_settings, compute, "covariances",
                       lambda lm, data, config, progress: fit_covariances(lm, data, config.fisher, config.seed, progress))


@dg.asset(deps=[ekfac_covariances], group_name="ekfac", kinds={"safetensors"}, code_version="1")
def ekfac_eigenbasis(context: dg.AssetExecutionContext, storage: StorageResource, influence: InfluenceResource,
                     model_settings: ModelResource, compute: ComputeResource) -> dg.MaterializeResult:
    """Summed covariances, eigendecomposed in float64."""
    started = time.monotonic()
    _, store, covariances, missing = _reduce(
        context, storage, influence, model_settings, compute, "ekfac_covariances", CovarianceState
    )
    basis = eigenbasis(covariances)
    store.write_tensors(EIGENBASIS_KEY, *basis.to_tensors())
    return dg.MaterializeResult(metadata={
        **artefact_metadata(store, EIGENBASIS_KEY, started=started),
        "tokens": covariances.n_tokens, "documents": covariances.n_examples, "layers": len(basis.QA),
        "shards_missing": dg.MetadataValue.json(missing),
    })


def _fit_lambdas(lm, data, config, progress, store: Storage) -> LambdaState:
    basis = Eigenbasis.from_tensors(*store.read_tensors(EIGENBASIS_KEY))
    return fit_lambdas(lm, basis, data, config.fisher, config.seed, progress)


@dg.asset(**PER_SHARD, deps=[ekfac_eigenbasis, corpus_shards, "model"], group_name="ekfac",
          **GPU_ASSET, kinds={"pytorch", "safetensors"}, code_version="1")
def ekfac_lambdas(context: dg.AssetExecutionContext, storage: StorageResource, influence: InfluenceResource,
                  model_settings: ModelResource, compute: ComputeResource) -> dg.MaterializeResult:
    """Per-shard sums of the eigenvalue correction (Q_S^T dW Q_A)^2 over documents."""
    store = storage.open()
    return _shard_pass(context, storage, influence, model_settings, compute, "eigenvalue corrections",
                       lambda lm, data, config, progress: _fit_lambdas(lm, data, config, progress, store))


@dg.asset(deps=[ekfac_lambdas], group_name="ekfac", kinds={"safetensors"}, code_version="1")
def ekfac_factors(context: dg.AssetExecutionContext, storage: StorageResource, influence: InfluenceResource,
                  model_settings: ModelResource, compute: ComputeResource) -> dg.MaterializeResult:
    """The preconditioner: eigenbasis, averaged corrected eigenvalues and per-layer damping."""
    started = time.monotonic()
    config, store, lambdas, missing = _reduce(
        context, storage, influence, model_settings, compute, "ekfac_lambdas", LambdaState
    )
    basis = Eigenbasis.from_tensors(*store.read_tensors(EIGENBASIS_KEY))
    factors = make_factors(basis, lambdas, config.damping)
    store.write_tensors(FACTORS_KEY, *factors.to_tensors())
    damping_md = "\n".join(f"- `{name}`: {value:.3g}" for name, value in factors.damping.items())
    return dg.MaterializeResult(metadata={
        **artefact_metadata(store, FACTORS_KEY, started=started),
        "documents": lambdas.n_examples, "damping": dg.MetadataValue.md(damping_md),
        "shards_missing": dg.MetadataValue.json(missing),
    })
