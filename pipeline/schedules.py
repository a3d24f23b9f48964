"""The daily input refresh: the sensor's refresh on a cron schedule, for deployments that prefer
one listing of the corpus a day to one a minute (large S3 prefixes)."""

from __future__ import annotations

import os

import dagster as dg

from pretrace.resources.pretrace import PretraceResource

from .jobs import shard_job
from .sensors import CLEAN_HINT, refresh_inputs

REFRESH_CRON_ENV = "PRETRACE_REFRESH_CRON"
DEFAULT_REFRESH_CRON = "0 3 * * *"  # daily, 03:00 in the schedule's timezone


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
        description=f"Input refresh on `{cron}`: new corpus files get shard partitions, changed "
        "inputs are observed, removed files are reported.",
    )
    def corpus_refresh_schedule(context: dg.ScheduleEvaluationContext, pretrace: PretraceResource):
        refresh = refresh_inputs(context.instance, pretrace)
        if refresh.removed:
            context.log.warning(f"corpus files gone: {', '.join(refresh.removed)}; {CLEAN_HINT}")
        return dg.SkipReason(refresh.summary())

    return corpus_refresh_schedule


corpus_refresh_schedule = build_refresh_schedule()
