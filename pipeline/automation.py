"""Declarative automation driven by the recompute policy: every artefact is kept current.

One custom condition, `OutOfDate`, is put on every materializable asset. On each tick it asks
`pretrace.project.provenance.Project` which partitions are missing or stale with all their inputs
current, and requests those whose expected manifest it has not requested before. So:

- a new corpus file flows through tokens, gradients and scores to one new report, stage by
  stage (downstream waits until upstream is current: the policy calls it `waiting`);
- a changed setting, model, corpus file or query set recomputes exactly what the policy says;
- a run that fails is not retried over and over: the same expected manifest is requested once,
  and a changed input (a fixed file, a new setting) makes a new one;
- an artefact deleted from storage is missing again, whatever the instance remembers;
- a partition that a run or backfill is computing is left alone until it ends: publishing
  deletes the old manifest first, and that brief `missing` must not start a second run.

The condition runs arbitrary Python, so the automation sensor evaluates it in the code server
(`use_user_code_server=True`). Its interval is $PRETRACE_AUTOMATION_INTERVAL_S (30 s).
"""

from __future__ import annotations

import hashlib
import json

import dagster as dg

from pretrace.assets.common import artefact_of, asset_key
from pretrace.assets.partitions import to_pretrace
from pretrace.errors import PretraceError
from pretrace.project.manifests import canonical_json
from pretrace.project.provenance import Project
from pretrace.resources.pretrace import PretraceResource

from .sensors import interval_from_env

AUTOMATION_INTERVAL_ENV = "PRETRACE_AUTOMATION_INTERVAL_S"
_TICK_PROJECTS: dict[tuple, Project] = {}
_WARNED: set[object] = set()  # the tick whose unreadable inputs were already logged


def tick_project(resource: PretraceResource, evaluation_time: object) -> Project:
    """One Project per tick, shared by the conditions of every asset evaluated in it."""
    key = (id(resource), evaluation_time)
    if key not in _TICK_PROJECTS:
        _TICK_PROJECTS.clear()
        _TICK_PROJECTS[key] = resource.project()
    return _TICK_PROJECTS[key]


def expected_digest(project: Project, asset: str, shard: str | None) -> str | None:
    """A short digest of the manifest the partition would be computed under, when runnable."""
    status = project.status(asset, shard)
    return status.expected.basis_digest() if status.runnable else None


class OutOfDate(dg.AutomationCondition):
    """Missing or stale (by the manifests in storage), every input current, not yet requested
    for this expected manifest."""

    def __init__(self, resource: PretraceResource) -> None:
        self.resource = resource

    @property
    def description(self) -> str:
        return "out of date by pretrace's recompute policy, inputs current, not yet requested for this state"

    @property
    def name(self) -> str:
        return "out_of_date"

    async def evaluate(self, context: dg.AutomationContext) -> dg.AutomationResult:
        try:
            busy = {to_pretrace(context.partitions_def, k) for k in await in_progress(context)}
            return self._evaluate(context, busy)
        except PretraceError as exc:  # an unreadable input: nothing can be computed; say so once a tick
            if context.evaluation_time not in _WARNED:
                _WARNED.clear()
                _WARNED.add(context.evaluation_time)
                context.log.warning(f"nothing requested: {exc}")
            return dg.AutomationResult(context=context, true_subset=context.get_empty_subset(), cursor=context.cursor)

    def _evaluate(self, context: dg.AutomationContext, busy: set[str | None]) -> dg.AutomationResult:
        model, asset = artefact_of(context.key)
        project = tick_project(self.resource, context.evaluation_time).compared(model)
        requested: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
        candidates = context.candidate_subset
        dagster_key = {}  # pretrace's partition -> Dagster's key (`assets.partitions`)
        if candidates.is_partitioned:
            wanted = set(project.partitions(project.graph[asset]))
            dagster_key = {
                to_pretrace(context.partitions_def, k): k for k in candidates.expensively_compute_partition_keys()
            }
            shards = [s for s in dagster_key if s in wanted]
        else:
            shards = [None] if not candidates.is_empty else []
        # A busy partition keeps what was requested for it: judged again once its run has ended.
        pending = {str(s): requested[str(s)] for s in busy if str(s) in requested}
        due = []
        for shard in (s for s in shards if s not in busy):
            digest = expected_digest(project, asset, shard) or after_requested_inputs(context, project, asset, shard)
            if digest is None:
                continue
            pending[str(shard)] = digest
            if requested.get(str(shard)) != digest:
                due.append(shard)
        if candidates.is_partitioned:
            true_subset = candidates.compute_intersection_with_partition_keys({dagster_key[s] for s in due})
        else:
            true_subset = candidates if due else context.get_empty_subset()
        # Only what is still out of date is remembered, so the cursor stays small.
        return dg.AutomationResult(context=context, true_subset=true_subset, cursor=json.dumps(pending, sort_keys=True))


def after_requested_inputs(
    context: dg.AutomationContext, project: Project, asset: str, shard: str | None
) -> str | None:
    """A waiting partition whose every out-of-date input is requested in this tick, in a run it may
    join (`Project.may_join`), joins that run: a digest of those inputs' requests, else None. So
    a new corpus file's tokens, gradients and scores are one run instead of one run per stage."""
    if project.status(asset, shard).state != "waiting":
        return None
    basis = []
    for owner, name, partition in project.waiting_on(asset, shard):
        if not project.may_join(asset, shard, owner, name, partition):
            return None
        key = asset_key(owner.name, name)
        requested = context.request_subsets_by_key.get(key)
        if requested is None:
            return None
        if requested.is_partitioned:
            keys = {to_pretrace(requested.partitions_def, k) for k in requested.expensively_compute_partition_keys()}
            if partition not in keys:
                return None
        elif requested.is_empty:
            return None
        basis.append(f"{key.to_user_string()}[{partition}]:{expected_digest(owner, name, partition) or 'joined'}")
    return "after-" + hashlib.sha256(canonical_json(sorted(basis)).encode()).hexdigest()[:16] if basis else None


async def in_progress(context: dg.AutomationContext) -> set[str | None]:
    """The candidate partitions (None: the unpartitioned asset) a run or backfill is computing."""
    view, candidates = context.asset_graph_view, context.candidate_subset
    busy = (await view.compute_run_in_progress_subset(key=context.key, from_subset=candidates)).compute_union(
        await view.compute_backfill_in_progress_subset(key=context.key, from_subset=candidates)
    )
    busy = busy.compute_intersection(candidates)
    if not busy.is_partitioned:
        return set() if busy.is_empty else {None}
    return set(busy.expensively_compute_partition_keys())


def build_automation_sensor(minimum_interval_seconds: int | None = None) -> dg.AutomationConditionSensorDefinition:
    return dg.AutomationConditionSensorDefinition(
        "pretrace_automation",
        target=dg.AssetSelection.all(),
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=minimum_interval_seconds or interval_from_env(AUTOMATION_INTERVAL_ENV, 30),
        use_user_code_server=True,
        description="Keeps every artefact current by pretrace's recompute policy (manifests in storage).",
    )
