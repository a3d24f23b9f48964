"""A step on several GPUs (`gpus_per_step` > 1): the step runs torchrun, one process per GPU,
on `pretrace.assets.torchrun_step`, and waits. The ranks split the work
(`pretrace.influence.distributed`) and rank 0 commits the artefact; the step reads its manifest
back and reports it as any other step's."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import dagster as dg

from pretrace.errors import PretraceError
from pretrace.influence.distributed import check_gpus_per_step, run_torchrun
from pretrace.project.computation import Computation
from pretrace.resources.pretrace import PretraceResource

from .common import artefact_of, materialized, say

Progresses = Callable[[int, str], Callable[[int], None]]
"""(total, what) -> a progress callback: `progress_logger` in a step, printed lines in a rank."""
STEP_MODULE = "pretrace.assets.torchrun_step"


def stepped_under_torchrun(
    context: dg.AssetExecutionContext, pretrace: PretraceResource, run: Computation, started: float
) -> dg.MaterializeResult:
    """This partition computed by `gpus_per_step` processes under torchrun (their lines in this
    step's log, their error raised here) and committed by rank 0."""
    gpus = run.project.config.gpus_per_step
    check_gpus_per_step(gpus, run.project.config.device)
    model, artefact = artefact_of(context.assets_def.key)
    with tempfile.TemporaryDirectory(prefix="pretrace-step-") as folder:
        settings = Path(folder, "pretrace.json")
        settings.write_text(pretrace.config.model_dump_json())
        arguments = ["--settings", str(settings), "--artefact", artefact]
        arguments += ["--model", model] if model else []
        arguments += ["--partition", run.partition] if run.partition is not None else []
        arguments += ["--demo"] if pretrace.demo else []
        description = run_torchrun(STEP_MODULE, arguments, gpus, lambda line: say(context, line))
    run.project.forget(run.artefact, run.partition)
    manifest = run.project.store.manifest(run.artefact, run.partition)
    if manifest is None:
        raise PretraceError(f"torchrun ended without committing {run.label}; see the step's log")
    return materialized(run, manifest, started, processes=gpus, **description)
