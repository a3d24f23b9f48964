"""Corpus refresh: new or changed corpus files become shard partitions and shard runs."""


import json

import dagster as dg

from assets.corpus import corpus_by_shard
from assets.partitions import shard_partitions
from resources.settings import InfluenceResource

from .jobs import shard_job


def refresh_requests(
    instance: dg.DagsterInstance, corpus: str, cursor: str | None
) -> tuple[list[dg.RunRequest], list[str], str]:
    """Run requests for new or changed files, the shards whose files vanished, and the new cursor.

    The cursor maps each shard to its file's change token (mtime locally, ETag on S3), so a
    rewritten file is re-materialized and an unchanged one is not.
    """
    seen: dict[str, str] = json.loads(cursor) if cursor else {}
    files = corpus_by_shard(corpus)
    known = set(instance.get_dynamic_partitions(shard_partitions.name))
    new_keys = sorted(set(files) - known)
    if new_keys:
        instance.add_dynamic_partitions(shard_partitions.name, new_keys)
    requests = [
        dg.RunRequest(partition_key=shard, run_key=f"{shard}:{f.token}", tags={"pretrace/file": f.url})
        for shard, f in sorted(files.items())
        if seen.get(shard) != f.token
    ]
    removed = sorted(set(seen) - set(files))
    return requests, removed, json.dumps({shard: f.token for shard, f in files.items()}, sort_keys=True)


@dg.sensor(job=shard_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.STOPPED)
def corpus_sensor(context: dg.SensorEvaluationContext, influence: InfluenceResource):
    """Watch the corpus folder or S3 prefix; each new or changed file gets a shard run."""
    requests, removed, cursor = refresh_requests(context.instance, influence.corpus, context.cursor)
    if removed:
        context.log.warning(f"corpus files removed; their shards keep their old results: {removed}")
    context.update_cursor(cursor)
    if not requests:
        return dg.SkipReason("no new or changed corpus files" + (f"; removed: {removed}" if removed else ""))
    return requests
