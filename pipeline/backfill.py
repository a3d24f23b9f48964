"""One `pretrace run` is one asset backfill in the instance: the entry the UI's Runs page lists
(its Dagster runs nested under it), tagged with the project's storage root.

Why a backfill and not one run: a Dagster run materializes one partition (or one range) of one
partitions definition, and the graph has three (unpartitioned, `shard`, `shard` x `group`), so
the artefacts a run recomputes take one Dagster run per partition group. Dagster groups such runs
as an asset backfill, which is what the UI's own "Materialize all" over mixed partitions launches.
Here pretrace executes the backfill's runs itself, in-process and in the policy's order; the
record targets exactly what the policy says is out of date, marked requested from the start, so
a daemon sharing the instance tracks its progress but never launches a run for it (and
automation leaves its partitions alone while it is in progress).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import dagster as dg
from dagster._core.definitions.assets.graph.asset_graph_subset import AssetGraphSubset
from dagster._core.definitions.events import AssetKeyPartitionKey
from dagster._core.execution.asset_backfill import AssetBackfillData
from dagster._core.execution.backfill import BulkActionsFilter, BulkActionStatus, PartitionBackfill
from dagster._core.storage.tags import BACKFILL_ID_TAG
from dagster._core.utils import make_new_backfill_id

from pretrace.assets.common import StepInterrupted

Target = tuple[dg.AssetKey, str | None]  # an asset and its Dagster partition key


_TITLE_LIMIT = 100  # Dagster refuses a longer backfill title
_NOT_IN_TITLES = re.compile(r'[%*"]')  # nor one with these characters


def backfill_title(storage: str) -> str:
    """ "pretrace run <storage>" as Dagster accepts a title: a long storage root keeps its end
    (the part that tells projects apart), and the characters titles refuse become "_"."""
    head, where = "pretrace run ", _NOT_IN_TITLES.sub("_", storage)
    room = _TITLE_LIMIT - len(head)
    return head + (where if len(where) <= room else "…" + where[-(room - 1) :])


class RunBackfill:
    """The backfill of one `pretrace run`: created before the first run, its materialized
    partitions recorded after each run, closed with the run's outcome."""

    def __init__(
        self,
        instance: dg.DagsterInstance,
        defs: dg.Definitions,
        targets: Iterable[Target],
        tags: dict[str, str],
        title: str,
    ) -> None:
        self.instance = instance
        self.graph = defs.resolve_asset_graph()
        self.id = make_new_backfill_id()
        target = self._subset(targets)
        data = AssetBackfillData.empty(target, time.time(), instance)._replace(
            requested_runs_for_target_roots=True, requested_subset=target
        )
        self.record = PartitionBackfill(
            backfill_id=self.id,
            status=BulkActionStatus.REQUESTED,
            from_failure=False,
            tags=tags,
            backfill_timestamp=data.backfill_start_timestamp,
            asset_selection=sorted(target.asset_keys, key=lambda k: k.to_user_string()),
            title=title,
            asset_backfill_data=data,
        )
        instance.add_backfill(self.record)

    @property
    def run_tags(self) -> dict[str, str]:
        """What each of its runs carries: the UI nests the run under the backfill."""
        return {BACKFILL_ID_TAG: self.id}

    def _subset(self, targets: Iterable[Target]) -> AssetGraphSubset:
        return AssetGraphSubset.from_asset_partition_set({AssetKeyPartitionKey(k, p) for k, p in targets}, self.graph)

    def _data(self) -> AssetBackfillData:
        return self.record.get_asset_backfill_data(self.graph)

    def _save(self, record: PartitionBackfill) -> None:
        self.record = record
        self.instance.update_backfill(record)

    def materialized(self, targets: Iterable[Target]) -> None:
        data = self._data()
        done = data.materialized_subset | self._subset(targets)
        self._save(
            self.record.with_asset_backfill_data(data._replace(materialized_subset=done), self.instance, self.graph)
        )

    @contextmanager
    def closing(self) -> Iterator[None]:
        """Closed with the outcome of the block: success; an interruption (a signal) cancels it;
        any other error fails it."""
        try:
            yield
        except (KeyboardInterrupt, dg.DagsterExecutionInterruptedError, StepInterrupted):
            self.finish(BulkActionStatus.CANCELED)
            raise
        except BaseException:
            self.finish(BulkActionStatus.COMPLETED_FAILED)
            raise
        self.finish(BulkActionStatus.COMPLETED_SUCCESS)

    def finish(self, outcome: BulkActionStatus) -> None:
        """Close it: COMPLETED_SUCCESS, or COMPLETED_FAILED / CANCELED with what was not
        materialized marked failed."""
        data = self._data()
        left = data.target_subset - data.materialized_subset
        if outcome != BulkActionStatus.COMPLETED_SUCCESS:
            data = data._replace(failed_and_downstream_subset=left)
        record = self.record.with_asset_backfill_data(data, self.instance, self.graph)
        self._save(record.with_status(outcome).with_end_timestamp(time.time()))


def close_dead_backfills(
    instance: dg.DagsterInstance, tags: dict[str, str], is_dead: Callable[[PartitionBackfill], bool]
) -> list[str]:
    """Backfills of `pretrace run` processes that are gone (``is_dead(backfill)``), still marked in
    progress, are marked failed: automation would leave their partitions alone for ever."""
    closed = []
    for backfill in instance.get_backfills(filters=BulkActionsFilter(statuses=[BulkActionStatus.REQUESTED])):
        if tags.items() <= backfill.tags.items() and is_dead(backfill):
            instance.update_backfill(
                backfill.with_status(BulkActionStatus.COMPLETED_FAILED).with_end_timestamp(time.time())
            )
            closed.append(backfill.backfill_id)
    return closed
