"""`pretrace run`: bring every artefact up to date in-process, recomputing exactly what the
recompute policy says is missing or stale (pretrace.project.provenance), in the asset graph's order,
as one asset backfill in the instance (pipeline/backfill.py: why not one Dagster run).

Before any work: the storage root must be writable, runs of this machine whose process died are
marked failed (they would stay STARTED for ever), and temporaries that killed writers left are
removed. Shards of corpus files that are gone are reported, not computed.
"""

from __future__ import annotations

import graphlib
import os
import socket
from collections.abc import Callable
from contextlib import nullcontext

import dagster as dg

from pretrace.assets.common import HOST_TAG, PID_TAG, artefact_of
from pretrace.assets.partitions import to_dagster
from pretrace.config import PretraceConfig
from pretrace.errors import NotReady
from pretrace.project.artefacts import Artefact
from pretrace.project.provenance import Project
from pretrace.resources.pretrace import PretraceResource
from pretrace.store.storage import pid_alive

from .backfill import RunBackfill, backfill_title, close_dead_backfills
from .sensors import CLEAN_HINT, refresh_inputs
from .signals import raise_if_stopped

Log = Callable[[str], None]


def logging_config(console_level: str = "INFO") -> dict:
    """Run config showing ``console_level`` and above on Dagster's console logger (its default,
    DEBUG, is every step event)."""
    return {"loggers": {"console": {"config": {"log_level": console_level}}}}


STORAGE_TAG = "pretrace/storage"  # the project a run computed, by its storage root
ACTIVE = [dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]


def asset_order(defs: dg.Definitions) -> list[str]:
    """Materializable assets in dependency order, from the definitions' asset specs; one model's
    assets run together as far as the graph allows (ties: by name), so that a run with compared
    models loads each checkpoint once rather than once per step."""
    specs = {spec.key: spec for spec in defs.resolve_all_asset_specs()}
    graph = {key: {d.asset_key for d in spec.deps if d.asset_key in specs} for key, spec in specs.items()}
    sorter = graphlib.TopologicalSorter(graph)
    sorter.prepare()
    ready: set[dg.AssetKey] = set()
    order: list[dg.AssetKey] = []
    model = None
    while sorter.is_active():
        ready.update(sorter.get_ready())
        same_model = [k for k in ready if artefact_of(k)[0] == model]
        key = min(same_model or ready, key=lambda k: k.to_user_string())
        ready.remove(key)
        order.append(key)
        model = artefact_of(key)[0]
        sorter.done(key)
    return [k.to_user_string() for k in order]


def executable(defs: dg.Definitions) -> list:
    """What `dg.materialize` needs to run assets together with their checks."""
    return [*defs.assets, *(defs.asset_checks or [])]


def _dead(tags: dict[str, str]) -> int | None:
    """The process id in ``tags`` when that process is gone, else None."""
    pid = int(tags.get(PID_TAG, 0))
    return pid if pid and pid != os.getpid() and not pid_alive(pid) else None


def fail_dead_runs(instance: dg.DagsterInstance, log: Log) -> None:
    """Runs this machine started in-process whose process is gone (SIGKILL, OOM) are failed,
    and the `gpu` pool slots they held are freed, as run monitoring does for deployed runs (no
    daemon watches in-process runs: without this, the next run would wait for a dead holder);
    the backfill such a process left in progress is closed as failed."""
    here = {HOST_TAG: socket.gethostname()}
    for run in instance.get_runs(dg.RunsFilter(statuses=ACTIVE, tags=here)):
        pid = _dead(run.tags)
        if pid:
            instance.report_run_failed(run, f"its process {pid} is gone (killed or crashed)")
            instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
            log(f"run {run.run_id} was left unfinished by process {pid}; marked failed and its pool slots freed")
    for backfill in close_dead_backfills(instance, here, lambda b: _dead(b.tags) is not None):
        log(f"backfill {backfill} was left unfinished by a process that is gone; marked failed")


Item = tuple[str | None, str, str | None]  # (compared model, artefact, partition)
Member = tuple[dg.AssetKey, Project, Artefact, str | None]


def _partitions(defs: dg.Definitions, project: Project) -> list[Member]:
    """Every artefact partition the project should have, in the asset graph's order."""
    found = []
    for name in asset_order(defs):
        key = dg.AssetKey.from_user_string(name)
        model, artefact_name = artefact_of(key)
        owner = project.compared(model)  # a compared model's artefacts are keyed `<model>/<artefact>`
        if artefact_name in owner.graph:
            artefact = owner.graph[artefact_name]
            found += [(key, owner, artefact, shard) for shard in owner.partitions(artefact)]
    return found


def due_together(everything: list[Member], force: bool, done: set[Item]) -> list[Member]:
    """What can be computed now, of ``everything`` (`_partitions`): each out-of-date partition
    (each not yet recomputed, with ``force``) whose inputs are current, or may join the run that
    computes them (`Project.may_join`), as automation requests them (pipeline.automation)."""
    wave: list[Member] = []
    chosen: set[Item] = set()
    for key, owner, artefact, shard in everything:
        item = (owner.name, artefact.name, shard)
        if item in done or (not force and owner.status(artefact, shard).current):
            continue
        same_run = True
        for upstream, name, partition in owner.input_partitions(artefact, shard):
            if (upstream.name, name, partition) in done or (not force and upstream.status(name, partition).current):
                continue
            joins = (upstream.name, name, partition) in chosen and owner.may_join(
                artefact, shard, upstream, name, partition
            )
            same_run = same_run and joins
        if same_run:
            wave.append((key, owner, artefact, shard))
            chosen.add(item)
    return wave


def _runs(wave: list[Member], partitions: dict) -> list[list[Member]]:
    """The wave's runs: one per partition of assets partitioned alike, in the graph's order."""
    runs: dict[tuple, list[Member]] = {}
    for member in wave:
        runs.setdefault((partitions[member[0]], member[3]), []).append(member)
    return list(runs.values())


def materialize_pipeline(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    *,
    force: bool = False,
    log: Log = print,
    console_level: str = "INFO",
    project: Project | None = None,
) -> Project:
    """Materialize every missing or stale artefact partition (every one with ``force``).

    The CLI turns Dagster's console logger off (``console_level``) and shows the assets'
    progress logger instead, so that a failure ends with one line, not a step's stack.
    ``project``: the view of storage and inputs the caller already read (preflight's), if any.
    """
    run_config = logging_config(console_level)
    resource: PretraceResource = defs.resources["pretrace"]
    project = project or resource.project()
    project.storage.check_writable()  # fail before any work, not after an hour
    fail_dead_runs(instance, log)
    for path in project.storage.remove_leftovers():
        log(f"removed {path}, left by a killed writer")
    refresh = refresh_inputs(instance, resource)
    if refresh.removed:
        log(f"corpus files gone, not in the results: {', '.join(refresh.removed)}; {CLEAN_HINT}")
    assets = executable(defs)
    partitions = {spec.key: spec.partitions_def for spec in defs.resolve_all_asset_specs()}
    tags = {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid()), STORAGE_TAG: project.storage.url()}
    everything = _partitions(defs, project)
    due = [
        (key, to_dagster(partitions[key], shard))
        for key, owner, artefact, shard in everything
        if force or not owner.status(artefact, shard).current
    ]
    backfill = RunBackfill(instance, defs, due, tags, title=backfill_title(project.storage.url())) if due else None
    done: set[Item] = set()
    with backfill.closing() if backfill else nullcontext():
        while wave := due_together(everything, force, done):
            for members in _runs(wave, partitions):
                for _, owner, artefact, shard in members:
                    status = owner.status(artefact, shard)
                    log(f"materializing {owner.label(artefact, shard)} ({status.state}: {status.reason or 'forced'})")
                partition = to_dagster(partitions[members[0][0]], members[0][3])
                result = dg.materialize(
                    assets,
                    selection=[key for key, *_ in members],
                    partition_key=partition,
                    instance=instance,
                    resources=defs.resources,
                    run_config=run_config,
                    tags={**tags, **backfill.run_tags},
                )
                backfill.materialized([(key, partition) for key, *_ in members])
                for _, owner, artefact, shard in members:
                    owner.forget(artefact, shard)
                    done.add((owner.name, artefact.name, shard))
                labels = {key: owner.label(artefact, shard) for key, owner, artefact, shard in members}
                for check in result.get_asset_check_evaluations():  # a failed check does not stop the run: say it
                    if not check.passed:
                        kind = "warning" if check.severity == dg.AssetCheckSeverity.WARN else "check failed"
                        log(f"{kind}: {labels[check.asset_key]}: {check.check_name}: {check.description or 'failed'}")
                raise_if_stopped()  # a signal Dagster took in the run's last moments, after its own checks
        for _, owner, artefact, shard in everything:
            status = owner.status(artefact, shard)
            if not status.current:
                raise NotReady(f"{owner.label(artefact, shard)} cannot be computed: {status.reason}")
    return project


def run_in_process(config: PretraceConfig, instance: dg.DagsterInstance | None = None) -> list[str]:
    """`pretrace run` in-process (a fresh ephemeral instance unless given), quietly: the artefact
    partitions it materialized, in order. What tests and benches run a project with."""
    from .definitions import build_definitions

    ran: list[str] = []
    materialize_pipeline(
        build_definitions(config),
        instance or dg.DagsterInstance.ephemeral(),
        log=lambda m: ran.append(m.split(" ")[1]) if m.startswith("materializing") else None,
    )
    return ran
