"""Corpus refresh: new or changed corpus files become shard partitions and shard runs.

The same plan (`plan_refresh`) drives the `corpus_sensor` (every minute, with a cursor) and the
`corpus_refresh_schedule` (pipeline/schedules.py, daily by default, no cursor):

- a new file registers a dynamic `shard` partition and requests a `shard_job` run for it
  (tokens, document gradients and scores in one run: one model load, one GPU slot per step);
- a changed file (size or change token: mtime locally, ETag on S3) requests a new run, with a
  new run key, so it is re-materialized;
- an unchanged file requests nothing;
- a removed file is reported (a warning in the tick's log, the SkipReason, and the
  `pretrace/removed_shards` tag of the runs requested on that tick). Its partition and artefacts
  are kept, so its old scores stay in the report until someone deletes the partition.

A shard missing from the cursor (first tick, a reset cursor, the schedule) counts as unchanged
when its last `corpus_shards` materialization recorded the file's current change token, so a
fresh sensor on an existing deployment does not redo the whole corpus.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import dagster as dg

from assets.common import seconds_from_env
from assets.corpus import corpus_by_shard
from assets.partitions import shard_partitions
from pretrace.corpus import CorpusFile
from resources.settings import InfluenceResource

from .jobs import shard_job

SENSOR_INTERVAL_ENV = "PRETRACE_SENSOR_INTERVAL_S"
REMOVED_TAG = "pretrace/removed_shards"
FILE_TAG = "pretrace/file"
CHANGE_TAG = "pretrace/change"
_MAX_TAG = 1000


def interval_from_env(name: str, default: int) -> int:
    """A tick interval in whole seconds (Dagster's unit), at least one."""
    return int(seconds_from_env(name, default, minimum=1))


def file_state(f: CorpusFile) -> str:
    """What the cursor remembers of a file: size and change token."""
    return f"{f.size}:{f.token}"


@dataclass
class RefreshPlan:
    files: dict[str, CorpusFile]
    new: list[str] = field(default_factory=list)  # not registered as partitions yet
    changed: list[str] = field(default_factory=list)  # registered, never materialized or content changed
    removed: list[str] = field(default_factory=list)  # registered, file gone

    @property
    def to_run(self) -> list[str]:
        return sorted(self.new + self.changed)

    def cursor(self) -> str:
        return json.dumps({shard: file_state(f) for shard, f in self.files.items()}, sort_keys=True)

    def removed_text(self) -> str:
        text = ", ".join(self.removed)
        return text if len(text) <= _MAX_TAG else text[: _MAX_TAG - 3].rsplit(",", 1)[0] + " …"

    def run_requests(self) -> list[dg.RunRequest]:
        requests = []
        for shard in self.to_run:
            f = self.files[shard]
            tags = {FILE_TAG: f.url, CHANGE_TAG: "new" if shard in self.new else "changed"}
            if self.removed:
                tags[REMOVED_TAG] = self.removed_text()
            # The run key names the file's state: the same state is never run twice by one
            # sensor or schedule, a rewritten file always is.
            requests.append(dg.RunRequest(partition_key=shard, run_key=f"{shard}@{file_state(f)}", tags=tags))
        return requests

    def skip_reason(self) -> str:
        reason = f"no new or changed corpus files among {len(self.files)}"
        if self.removed:
            reason += f"; removed (partitions and results kept): {self.removed_text()}"
        return reason


def last_file_token(instance: dg.DagsterInstance, shard: str) -> str | None:
    """The change token recorded by the latest `corpus_shards` materialization of a shard."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("corpus_shards"), asset_partitions=[shard]), limit=1
    ).records
    if not records:
        return None
    token = records[0].asset_materialization.metadata.get("file_token")
    return getattr(token, "value", None)


def plan_refresh(instance: dg.DagsterInstance, corpus: str, cursor: str | None) -> RefreshPlan:
    """Compare the corpus root with the cursor (or, for shards it lacks, with the instance)."""
    seen: dict[str, str] = json.loads(cursor) if cursor else {}
    files = corpus_by_shard(corpus)
    known = set(instance.get_dynamic_partitions(shard_partitions.name))
    plan = RefreshPlan(files=files)
    for shard, f in sorted(files.items()):
        if shard not in known:
            plan.new.append(shard)
        elif shard in seen:
            if seen[shard] != file_state(f):
                plan.changed.append(shard)
        elif last_file_token(instance, shard) != f.token:
            plan.changed.append(shard)
    plan.removed = sorted(known - set(files))
    return plan


def build_corpus_sensor(minimum_interval_seconds: int | None = None) -> dg.SensorDefinition:
    interval = minimum_interval_seconds or interval_from_env(SENSOR_INTERVAL_ENV, 60)

    @dg.sensor(
        name="corpus_sensor",
        job=shard_job,
        minimum_interval_seconds=interval,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Watch the corpus folder or S3 prefix: each new or changed file gets its shard "
        "partition and a shard_job run; removed files are reported.",
    )
    def corpus_sensor(context: dg.SensorEvaluationContext, influence: InfluenceResource):
        plan = plan_refresh(context.instance, influence.corpus, context.cursor)
        previous = set(json.loads(context.cursor)) if context.cursor else set()
        newly_removed = [s for s in plan.removed if s in previous]
        if newly_removed:
            context.log.warning(
                f"corpus files removed: {', '.join(newly_removed)}; their partitions and results are kept "
                "(delete the `shard` partitions to drop them from the report)"
            )
        if plan.new:
            context.log.info(f"new shard(s): {', '.join(plan.new)}")
        if plan.changed:
            context.log.info(f"changed shard(s): {', '.join(plan.changed)}")
        requests = plan.run_requests()
        return dg.SensorResult(
            run_requests=requests or None,
            skip_reason=None if requests else dg.SkipReason(plan.skip_reason()),
            cursor=plan.cursor(),
            dynamic_partitions_requests=[shard_partitions.build_add_request(plan.new)] if plan.new else None,
        )

    return corpus_sensor


corpus_sensor = build_corpus_sensor()
