"""What every asset shares: one artefact computation per materialization, its result, progress."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import dagster as dg
import pyarrow as pa

from pretrace.errors import ConcurrentChange, InputError, PretraceError
from pretrace.project.computation import Computation
from pretrace.project.manifests import Manifest
from pretrace.report.serve import report_url
from pretrace.resources.pretrace import PretraceResource

from .checks import check_results
from .k8s import GPU_OP_TAGS
from .partitions import to_pretrace

GPU_POOL = "gpu"
# What every GPU-heavy asset declares: the concurrency pool, and a GPU for its pod on Kubernetes.
GPU_ASSET = {"pool": GPU_POOL, "op_tags": GPU_OP_TAGS}
PROGRESS_INTERVAL_ENV = "PRETRACE_PROGRESS_INTERVAL_S"
PROGRESS_LOGGER = "pretrace.progress"
"""Progress lines also go to this Python logger, which `pretrace run` prints while Dagster's
console logger is off (in `dagster dev` it has no handler and stays silent)."""
# Transient failures (an S3 hiccup, an OOM-killed worker's retry) get two more tries; errors in
# the user's input or settings are dg.Failures that are never retried.
RETRY = dg.RetryPolicy(max_retries=2, delay=10, backoff=dg.Backoff.EXPONENTIAL)
# The machine and process of an in-process run (`pretrace run`), whose steps run in that process.
HOST_TAG, PID_TAG = "pretrace/host", "pretrace/pid"


PER_RUN_SETTINGS = (
    "per-run settings are refused: every run uses the settings of the code location's pretrace.yaml "
    "($PRETRACE_CONFIG), so that what storage holds matches one configuration. Launch without a "
    "`resources:` section; to change a setting, edit pretrace.yaml (the corpus sensor's next tick "
    "names what it makes stale), reload the code location, and materialize what is stale."
)


class StepInterrupted(dg.Failure):
    """SIGINT or SIGTERM stopped a step of an in-process run: its user stopped `pretrace run`, so
    the step must not be retried (Dagster retries an interrupted step under its retry policy, which
    is right for a deployed step whose pod was preempted, and which would ignore the signal here)."""


def seconds_from_env(name: str, default: float, minimum: float = 0.0) -> float:
    """A duration from the environment, for knobs that tests and small deployments turn down."""
    value = os.environ.get(name)
    if not value:
        return default
    try:
        return max(minimum, float(value))
    except ValueError:
        raise ValueError(f"${name}={value!r} is not a number of seconds") from None


def progress_interval() -> float:
    """Seconds between progress lines in run logs: short to watch small runs, long to keep big
    runs' event logs lean."""
    return seconds_from_env(PROGRESS_INTERVAL_ENV, 10.0)


def progress_logger(context: dg.AssetExecutionContext, total: int, what: str) -> Callable[[int], None]:
    """A callback that logs counts and an ETA every `progress_interval()` seconds and at the end."""
    start = time.monotonic()
    every = progress_interval()
    state = {"done": 0, "logged": start}

    def advance(n: int) -> None:
        state["done"] += n
        now = time.monotonic()
        if now - state["logged"] < every and state["done"] < total:
            return
        state["logged"] = now
        rate = state["done"] / max(now - start, 1e-9)
        eta = (total - state["done"]) / rate if rate > 0 else float("inf")
        say(context, f"{what}: {state['done']}/{total} ({rate:.1f}/s, ETA {eta:.0f} s)")

    return advance


def say(context: dg.AssetExecutionContext, message: str, level: int = logging.INFO) -> None:
    """Log to the run (the UI) and to the progress logger (the CLI)."""
    context.log.log(level, message)
    logging.getLogger(PROGRESS_LOGGER).log(level, message)


@contextmanager
def user_errors() -> Iterator[None]:
    """pretrace's own errors become one-line Dagster failures (no stack trace in the UI); a
    concurrent change may succeed on a retry, a bad input never does."""
    try:
        yield
    except PretraceError as exc:
        raise dg.Failure(description=str(exc), allow_retries=isinstance(exc, ConcurrentChange)) from exc


def artefact_of(key: dg.AssetKey) -> tuple[str | None, str]:
    """(compared model, artefact) of an asset key: ``<model>/<artefact>`` for a compared model's
    artefact (`compare_models`), ``<artefact>`` for the main model's."""
    return (key.path[0] if len(key.path) > 1 else None), key.path[-1]


def asset_key(model: str | None, artefact: str) -> dg.AssetKey:
    """The asset key of a model's artefact: the inverse of `artefact_of`."""
    return dg.AssetKey([*([model] if model else []), artefact])


@contextmanager
def computing(context: dg.AssetExecutionContext, pretrace: PretraceResource) -> Iterator[Computation]:
    """The computation of this asset's artefact (this partition's), with user errors unwrapped."""
    if (context.run.run_config.get("resources") or {}).get("pretrace"):
        raise dg.Failure(description=PER_RUN_SETTINGS, allow_retries=False)
    try:
        with user_errors():
            # A backfill run of one shard has a one-key partition range, not a partition key: read
            # the key itself, which Dagster gives for both.
            partitions = context.assets_def.partitions_def
            partition = to_pretrace(partitions, context.partition_key) if partitions else None
            model, artefact = artefact_of(context.assets_def.key)
            computation = Computation(pretrace.project().compared(model), artefact, partition, log=context.log.info)
            try:
                yield computation
            except InputError as exc:  # bad input: status and what waits on it name it, until it changes
                computation.record_failure(exc)
                raise
    except (KeyboardInterrupt, dg.DagsterExecutionInterruptedError) as exc:
        tags = context.run.tags
        if tags.get(HOST_TAG) != socket.gethostname() or tags.get(PID_TAG) != str(os.getpid()):
            raise
        raise StepInterrupted(description="stopped by a signal", allow_retries=False) from exc


def materialized(computation: Computation, manifest: Manifest, started: float, **metadata) -> dg.MaterializeResult:
    """The Dagster result of a commit: the content fingerprint as the data version, where the
    files are, how big, how long it took, and the asset's own metadata."""
    storage = computation.project.storage
    keys = [f"{manifest.artefact}/{name}" for name in manifest.files]
    return dg.MaterializeResult(
        check_results=check_results(computation, manifest),
        metadata={
            "paths": dg.MetadataValue.json([storage.url(k) for k in keys][:50]),
            "bytes": sum(d["bytes"] for d in manifest.files.values()),
            "seconds": round(time.monotonic() - started, 2),
            "fingerprint": manifest.fingerprint,
            **metadata,
        },
        data_version=dg.DataVersion(manifest.fingerprint),
    )


def table_preview(table: pa.Table, columns: list[str], rows: int = 10, width: int = 80) -> dg.MetadataValue:
    """The first rows of a table, as a Dagster table with a column schema (cells cut to `width`)."""

    def clip(v):
        return v[:width] if isinstance(v, str) else v

    records = [{c: clip(row[c]) for c in columns} for row in table.select(columns).slice(0, rows).to_pylist()]
    return table_metadata(records, {c: str(table.schema.field(c).type) for c in columns})


def table_metadata(records: list[dict], columns: dict[str, str]) -> dg.MetadataValue:
    """Rows as a Dagster table with a column schema (name -> type); cells that are not plain
    values show as text, missing ones as empty."""

    def plain(v):
        return "" if v is None else v if isinstance(v, (str, int, float, bool)) else str(v)

    return dg.MetadataValue.table(
        records=[dg.TableRecord({c: plain(row[c]) for c in columns}) for row in records],
        schema=dg.TableSchema(columns=[dg.TableColumn(c, t) for c, t in columns.items()]),
    )


def report_link(model: str | None, file: str) -> dg.MetadataValue:
    """A link the Dagster UI opens: a file of a model's report on the report server (`pretrace
    report`, or `pretrace ui` beside the UI); a browser follows no file:// or s3:// link from a page."""
    return dg.MetadataValue.url(report_url(file, model))


def also_reading(
    asset: dg.AssetsDefinition, compute: Callable[..., dg.MaterializeResult], upstream: str, op_name: str
) -> dg.AssetsDefinition:
    """``asset`` (one spec, computed by ``compute(context, pretrace)``) depending on ``upstream``
    too, for settings that make it read more (a whitened projection reads the factors). It gets
    an op of its own, ``op_name``: Dagster refuses two different ops of one name in a code
    location, and a compared model may keep the plain one."""
    (spec,) = asset.specs
    op = asset.op

    @dg.multi_asset(
        name=op_name,
        specs=[spec.replace_attributes(deps=[*spec.deps, dg.AssetDep(upstream)])],
        retry_policy=op.retry_policy,
        pool=op.pool,
        op_tags=op.tags,
        backfill_policy=asset.backfill_policy,
        required_resource_keys={"pretrace"},
    )
    def reading(context):  # unannotated: Dagster inspects annotations, which this module postpones
        return compute(context, context.resources.pretrace)

    return reading
