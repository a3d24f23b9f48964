"""The partitions: one dynamic `shard` partition per raw corpus file, and with `layer_groups` > 1
a static `group` dimension on the EK-FAC fitting assets, so one model's fitting fans out over
(shard, layer group) runs, each its own pod on Kubernetes.

pretrace names a partition ``shard``, ``group-i`` or ``shard/group-i`` (`pretrace.project.artefacts`);
Dagster names a two-dimensional one by a `MultiPartitionKey` (``group-i|shard``). The two
functions at the end translate at the boundary.
"""

from __future__ import annotations

import dagster as dg

from pretrace.project.artefacts import group_keys, partition_key, split_key

shard_partitions = dg.DynamicPartitionsDefinition(name="shard")
SHARD, GROUP = "shard", "group"

# What every per-shard asset declares. A backfill launches one run per shard, so a failed shard
# is retried alone and the others are not redone; batching shards per run would save a model
# load (seconds) per shard that costs minutes, at the price of retrying a whole batch. Such runs
# name their shard in the `dagster/asset_partition_range_start`/`_end` tags.
PER_SHARD = {"partitions_def": shard_partitions, "backfill_policy": dg.BackfillPolicy.multi_run(1)}


def group_partitions(layer_groups: int) -> dg.StaticPartitionsDefinition:
    return dg.StaticPartitionsDefinition(group_keys(layer_groups))


def shard_and_group_partitions(layer_groups: int) -> dg.MultiPartitionsDefinition:
    return dg.MultiPartitionsDefinition({SHARD: shard_partitions, GROUP: group_partitions(layer_groups)})


def to_pretrace(partitions_def: dg.PartitionsDefinition | None, key: str | None) -> str | None:
    """pretrace's name of a Dagster partition key of an asset with ``partitions_def``."""
    if not isinstance(partitions_def, dg.MultiPartitionsDefinition):
        return key
    dimensions = partitions_def.get_partition_key_from_str(str(key)).keys_by_dimension
    return partition_key(dimensions[SHARD], dimensions[GROUP])


def to_dagster(partitions_def: dg.PartitionsDefinition | None, partition: str | None) -> str | None:
    """The Dagster partition key of pretrace's ``partition`` of an asset with ``partitions_def``."""
    if not isinstance(partitions_def, dg.MultiPartitionsDefinition):
        return partition
    shard, group = split_key(partition)
    return dg.MultiPartitionKey({SHARD: shard, GROUP: group})
