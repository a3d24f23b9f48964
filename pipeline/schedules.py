"""The daily input refresh: the sensor's refresh on a cron schedule, for deployments that prefer
one listing of the corpus a day to one a minute (large S3 prefixes). Each new corpus file gets a
run of `shard_job` for what of its tokens, gradients and scores can be computed now (all three
unless the file changes the EK-FAC fit); the automation sensor carries the rest."""

from __future__ import annotations

import os

import dagster as dg

from pretrace.project.provenance import Project
from pretrace.resources.pretrace import PretraceResource

from .jobs import SHARD_ASSETS, shard_job
from .sensors import CLEAN_HINT, refresh_inputs

REFRESH_CRON_ENV = "PRETRACE_REFRESH_CRON"
DEFAULT_REFRESH_CRON = "0 3 * * *"  # daily, 03:00 in the schedule's timezone


def shard_run(project: Project, shard: str) -> dg.RunRequest | None:
    """The run of `shard_job` for a new shard: each of its assets that is out of date and whose
    inputs are current or computed earlier in the same run; None when there is none."""
    due: list[str] = []
    for name in SHARD_ASSETS:
        status = project.status(name, shard)
        joins = status.state == "waiting" and all(
            owner is project and upstream in due and project.may_join(name, shard, owner, upstream, partition)
            for owner, upstream, partition in project.waiting_on(name, shard)
        )
        if status.runnable or joins:
            due.append(name)
    if not due:
        return None
    return dg.RunRequest(
        run_key=f"new-shard:{shard}:{project.source('corpus_file', shard)}",
        partition_key=shard,
        asset_selection=[dg.AssetKey(name) for name in due],
    )


def build_refresh_schedule(
    cron: str | None = None,
    timezone: str = "UTC",
    default_status: dg.DefaultScheduleStatus = dg.DefaultScheduleStatus.STOPPED,
) -> dg.ScheduleDefinition:
    """A schedule running the input refresh on `cron` ($PRETRACE_REFRESH_CRON, daily by default).

    It starts stopped: `corpus_sensor` already watches every minute, and the two together would
    only duplicate listings. Turn the sensor off and this on (UI, or `dagster schedule start
    corpus_refresh_schedule`) to refresh on a timetable instead. Without a cursor, it compares
    each input's fingerprint with its latest observation in the instance.
    """
    cron = cron or os.environ.get(REFRESH_CRON_ENV) or DEFAULT_REFRESH_CRON

    @dg.schedule(
        name="corpus_refresh_schedule",
        cron_schedule=cron,
        execution_timezone=timezone,
        job=shard_job,
        default_status=default_status,
        description=f"Input refresh on `{cron}`: new corpus files get shard partitions and a run of "
        "their tokens, gradients and scores; changed inputs are observed; removed files are reported.",
    )
    def corpus_refresh_schedule(context: dg.ScheduleEvaluationContext, pretrace: PretraceResource):
        refresh = refresh_inputs(context.instance, pretrace)
        if refresh.removed:
            context.log.warning(f"corpus files gone: {', '.join(refresh.removed)}; {CLEAN_HINT}")
        project = pretrace.project()
        runs = [run for run in (shard_run(project, shard) for shard in refresh.new) if run is not None]
        return runs or dg.SkipReason(refresh.summary())

    return corpus_refresh_schedule


corpus_refresh_schedule = build_refresh_schedule()
