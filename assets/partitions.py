"""The corpus partitioning: one dynamic `shard` partition per raw corpus file."""

import dagster as dg

shard_partitions = dg.DynamicPartitionsDefinition(name="shard")

# What every per-shard asset declares. A backfill launches one run per shard, so a failed shard
# is retried alone and the others are not redone; batching shards per run would save a model
# load (seconds) per shard that costs minutes, at the price of retrying a whole batch. Such runs
# name their shard in the `dagster/asset_partition_range_start`/`_end` tags.
PER_SHARD = {"partitions_def": shard_partitions, "backfill_policy": dg.BackfillPolicy.multi_run(1)}
