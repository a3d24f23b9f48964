"""The daily corpus refresh: the sensor's plan on a cron schedule, for deployments that prefer
one listing of the corpus root a day to one a minute (large S3 prefixes)."""

from __future__ import annotations

import os

import dagster as dg

from resources.settings import InfluenceResource

from .jobs import shard_job
from .sensors import plan_refresh
from assets.partitions import shard_partitions

REFRESH_CRON_ENV = "PRETRACE_REFRESH_CRON"
DEFAULT_REFRESH_CRON = "0 3 * * *"  # daily, 03:00 in the schedule's timezone


def build_refresh_schedule(cron: str | None = None, timezone: str = "UTC",
                           default_status: dg.DefaultScheduleStatus = dg.DefaultScheduleStatus.STOPPED,
                           ) -> dg.ScheduleDefinition:
    """A schedule running the corpus refresh on `cron` ($PRETRACE_REFRESH_CRON, daily by default).

    It starts stopped: `corpus_sensor` already watches the corpus every minute, and the two
    together would only duplicate listings. Turn the sensor off and this on (UI or
    `dagster schedule start corpus_refresh_schedule`) to refresh on a timetable instead.
    Without a cursor, a shard is re-run when its file's change token differs from the one its
    last `corpus_shards` materialization recorded; run keys keep repeated ticks from re-running it.
    """
    cron = cron or os.environ.get(REFRESH_CRON_ENV) or DEFAULT_REFRESH_CRON

    @dg.schedule(name="corpus_refresh_schedule", cron_schedule=cron, execution_timezone=timezone, job=shard_job,
                 default_status=default_status,
                 description=f"Corpus refresh on `{cron}`: new files get shard partitions and runs, "
                             "changed files re-run, removed files are reported.")
    def corpus_refresh_schedule(context: dg.ScheduleEvaluationContext, influence: InfluenceResource):
        plan = plan_refresh(context.instance, influence.corpus, None)
        if plan.new:
            context.instance.add_dynamic_partitions(shard_partitions.name, plan.new)
        if plan.removed:
            context.log.warning(f"corpus files removed (partitions and results kept): {plan.removed_text()}")
        requests = plan.run_requests()
        return requests or dg.SkipReason(plan.skip_reason())

    return corpus_refresh_schedule


corpus_refresh_schedule = build_refresh_schedule()
