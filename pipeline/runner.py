"""Materialize the whole graph in-process, recomputing only what is missing or invalidated.

Used by `pretrace demo` and `pretrace run`. Rules: a new or changed corpus file recomputes its
shard's tokens, gradients and scores; changed queries recompute query gradients and scores,
never document gradients; a changed model recomputes everything. EK-FAC factors are fitted
once on the shards present (fit_shards) and refitted only when the model changes or on request.
"""

from __future__ import annotations

from typing import Callable

import dagster as dg
from dagster._core.definitions.observe import observe  # no public in-process observe yet

from assets.corpus import corpus_by_shard
from assets.ekfac import fit_shards
from assets.partitions import shard_partitions
from pretrace.model import checkpoint_fingerprint
from resources.settings import config_from_resources

from .sensors import last_file_token

Log = Callable[[str], None]
# Dagster's console logger defaults to DEBUG (every step event); the assets' own progress is INFO.
QUIET = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


class _Run:
    def __init__(self, defs: dg.Definitions, instance: dg.DagsterInstance, log: Log):
        self.defs, self.instance, self.log = defs, instance, log
        self.assets = list(defs.assets)
        self.resources = dict(defs.resources)
        self.ran: set[tuple[str, str | None]] = set()

    def latest(self, asset: str, partition: str | None = None) -> dg.EventLogRecord | None:
        records = self.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition] if partition else None),
            limit=1,
        ).records
        return records[0] if records else None

    def data_version(self, asset: str) -> str | None:
        record = self.latest(asset)
        if record is None:
            return None
        return record.asset_materialization.tags.get("dagster/data_version")

    def materialize(self, asset: str, partition: str | None = None) -> None:
        where = f"{asset}[{partition}]" if partition else asset
        self.log(f"materializing {where}")
        dg.materialize(self.assets, selection=[asset], partition_key=partition, instance=self.instance,
                       resources=self.resources, run_config=QUIET)
        self.ran.add((asset, partition))

    def has(self, asset: str, partition: str | None = None) -> bool:
        return self.latest(asset, partition) is not None


def materialize_pipeline(
    defs: dg.Definitions, instance: dg.DagsterInstance, *, refit: bool = False, log: Log = print
) -> list[str]:
    """Bring every asset up to date; returns the shards present."""
    run = _Run(defs, instance, log)
    run.resources["storage"].open().check_writable()  # fail before any work, not after an hour
    observe([defs.resolve_assets_def("corpus_files")], instance=instance)  # resources come bound
    config = config_from_resources(*(run.resources[k] for k in ("storage", "influence", "model_settings", "compute")))
    registered = set(instance.get_dynamic_partitions(shard_partitions.name))
    present = set(corpus_by_shard(config.corpus))
    if registered - present:
        log(f"corpus files gone, their shards are not recomputed: {sorted(registered - present)}")
    shards = sorted(registered & present)

    before = run.data_version("model")
    if not run.has("model") or (not _model_is_trained(defs) and checkpoint_fingerprint(config.model) != before):
        run.materialize("model")  # the demo's model is trained once; a user's when its files change
    model_changed = run.data_version("model") != before

    for shard in shards:
        token = last_file_token(instance, shard)
        if model_changed or token is None or token != _file_token(instance, shard):
            run.materialize("corpus_shards", shard)

    if refit or model_changed or not run.has("ekfac_factors"):
        fit = [s for s in fit_shards(config, instance) if s in shards]
        for shard in fit:
            run.materialize("ekfac_covariances", shard)
        run.materialize("ekfac_eigenbasis")
        for shard in fit:
            run.materialize("ekfac_lambdas", shard)
        run.materialize("ekfac_factors")

    before = run.data_version("queries")
    run.materialize("queries")
    if ("ekfac_factors", None) in run.ran or run.data_version("queries") != before or not run.has("query_gradients"):
        run.materialize("query_gradients")

    for shard in shards:
        if model_changed or ("corpus_shards", shard) in run.ran or not run.has("document_gradients", shard):
            run.materialize("document_gradients", shard)
        if (("query_gradients", None) in run.ran or ("document_gradients", shard) in run.ran
                or not run.has("influence_scores", shard)):
            run.materialize("influence_scores", shard)
    if any(asset == "influence_scores" for asset, _ in run.ran) or not run.has("influence_report"):
        run.materialize("influence_report")
    return shards


def _model_is_trained(defs: dg.Definitions) -> bool:
    """True for the demo, whose model asset is trained from the corpus rather than given."""
    return bool(defs.resolve_assets_def("model").asset_deps.get(dg.AssetKey("model")))


def _file_token(instance: dg.DagsterInstance, shard: str) -> str | None:
    """The change token last observed for a shard's corpus file."""
    records = instance.fetch_observations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("corpus_files"), asset_partitions=[shard]), limit=1
    ).records
    return records[0].asset_observation.tags.get("dagster/data_version") if records else None
