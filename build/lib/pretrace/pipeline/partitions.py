"""Partitions of the pipeline (defined beside the assets, which need them at import)."""

from pretrace.assets.partitions import shard_partitions

__all__ = ["shard_partitions"]
