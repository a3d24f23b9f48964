"""Reading per-shard statistics from storage and merging them one shard at a time.

Memory is bounded by one shard's statistics plus the running merge (Q x Q co-moments, Q x L top
values, Q x W histogram bins, Q x 2k top rows), whatever the number of shards or documents.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pyarrow as pa

from pretrace.analyses.shard_statistics import ShardStatistics
from pretrace.analyses.top_documents import merge_top_documents
from pretrace.errors import InputError
from pretrace.store.storage import Storage


@dataclass(frozen=True)
class ShardFiles:
    """Where one shard's statistics (safetensors) and top lists (Parquet) are stored."""

    shard: str
    statistics: str
    top: str


def merge_shards(items: Iterable[tuple[ShardStatistics, pa.Table]], k: int) -> tuple[ShardStatistics, pa.Table]:
    """Fold shards' (statistics, top table) pairs into corpus-wide ones, one at a time."""
    stats: ShardStatistics | None = None
    top: pa.Table | None = None
    for shard_stats, shard_top in items:
        stats = shard_stats if stats is None else stats.merge(shard_stats)
        top = merge_top_documents([shard_top] if top is None else [top, shard_top], k)
    if stats is None or top is None:
        raise InputError("no shard statistics to build a report from")
    return stats, top


def read_shards(store: Storage, shards: Sequence[ShardFiles]) -> Iterable[tuple[ShardStatistics, pa.Table]]:
    """Each shard's statistics and top table, read lazily; errors name the shard."""
    for files in shards:
        try:
            stats = ShardStatistics.from_tensors(*store.read_tensors(files.statistics))
        except InputError as exc:
            raise InputError(f"shard {files.shard!r}: {exc}") from None
        yield stats, store.read_parquet(files.top)


def merge_stored(store: Storage, shards: Sequence[ShardFiles], k: int) -> tuple[ShardStatistics, pa.Table]:
    """Merge the stored statistics of ``shards``; a shard scored with other queries is named in the error."""
    reference: list[str] | None = None
    first = None

    def checked():
        nonlocal reference, first
        for files, (stats, top) in zip(shards, read_shards(store, shards)):
            if reference is None:
                reference, first = stats.query_ids, files.shard
            elif stats.query_ids != reference:
                raise InputError(
                    f"shard {files.shard!r} was scored with other queries than shard {first!r}: "
                    "rematerialize influence_scores for the older shards"
                )
            yield stats, top

    return merge_shards(checked(), k)
