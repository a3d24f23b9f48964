"""The corpus partitioning: one dynamic `shard` partition per raw corpus file."""

import dagster as dg

shard_partitions = dg.DynamicPartitionsDefinition(name="shard")
