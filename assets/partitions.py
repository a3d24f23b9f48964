"""The corpus partitioning: one dynamic `shard` partition per raw corpus file."""

import dagster as dg

shard_partitions = dg.DynamicPartitionsDefinition(name="shard")

# What every per-shard asset declares. Backfills launch one run per shard, so a failed shard is
# retried alone and a run holds a `gpu` slot for one shard's steps only; loading the model once
# per run costs seconds where a real shard costs minutes.
PER_SHARD = {"partitions_def": shard_partitions, "backfill_policy": dg.BackfillPolicy.multi_run(1)}
