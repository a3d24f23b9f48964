"""Kubernetes: the pod each GPU step runs in, sized by the memory plan and the settings.

On a cluster (`$PRETRACE_EXECUTOR=k8s`, set by infra/helm/values.yaml) every step is its own
Kubernetes job (dagster-k8s's `k8s_job_executor`). The GPU assets carry what every GPU pod
needs in their op tags (the GPU nodes' taint tolerated), so it holds whoever launched the run.
What depends on the project is the executor's per-step config, built when the code location
loads: `gpus_per_step` GPUs, the host memory and disk the memory plan gives the step
(`pretrace.planning.memory_plan`, planned for the largest tokenized shard, since a step
computes one shard), and a node selector for the GPU type (`$PRETRACE_GPU_NODE_SELECTOR`,
a Helm value). The checkpoint is not downloaded by each pod: infra/helm/values.yaml mounts
it read-only from a volume (infra/checkpoint-volume.yaml).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable

import dagster as dg

from pretrace.config import PretraceConfig
from pretrace.errors import InputError
from pretrace.planning.memory_plan import Plan

GPU_RESOURCE = "nvidia.com/gpu"
GPU_OP_TAGS = {
    "dagster-k8s/config": {
        "pod_spec_config": {"tolerations": [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]},
    }
}
EXECUTOR_ENV = "PRETRACE_EXECUTOR"
NODE_SELECTOR_ENV = "PRETRACE_GPU_NODE_SELECTOR"
"""Node labels a GPU pod must match, ``key=value[,key=value]``, e.g.
``nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3`` (the NVIDIA GPU operator's label)."""

GIB = 1 << 30
PROCESS_MEMORY = 8 * GIB
"""Host memory per GPU process beyond the plan's tensors: Python, torch and the CUDA context,
and a checkpoint file read on its way to the device."""
SCRATCH_DISK = 10 * GIB
"""Pod disk beyond the plan's: local copies of the inputs a step reads from the storage root."""
CPUS_PER_GPU = 4
PLAN_STEP = {
    "ekfac_covariances": "covariances",
    "ekfac_eigenbasis": "eigenbasis",
    "ekfac_lambdas": "lambdas",
    "completions": "query_gradients",
    "query_gradients": "query_gradients",
    "document_gradients": "scores",
    "influence_scores": "scores",
    "reranked_scores": "scores",
    "attribution_eval": "scores",
}
"""The plan's step that sizes each GPU asset's pod."""


def step_needs(plan: Plan, asset: str) -> tuple[int, int]:
    """(host memory, disk) in bytes the plan gives the step that computes ``asset``; an asset the
    plan has no step for (the demo's training) gets the largest of every step. The one place
    that reads the plan's step names and fields."""
    steps = [step for step in plan.steps if step.name == PLAN_STEP.get(asset)] or plan.steps
    return max(step.host for step in steps), max(step.disk for step in steps)


def pod_config(gpus: int, host: int, disk: int, node_selector: dict[str, str]) -> dict:
    """A step pod's `dagster-k8s/config`: its GPUs, memory (requested and limited alike, so the
    scheduler places it where the plan's memory is free) and disk."""
    memory = _gib(host + gpus * PROCESS_MEMORY)
    config = {
        "container_config": {
            "resources": {
                "requests": {
                    "cpu": str(CPUS_PER_GPU * gpus),
                    "memory": memory,
                    "ephemeral-storage": _gib(disk + SCRATCH_DISK),
                    GPU_RESOURCE: str(gpus),
                },
                "limits": {"memory": memory, GPU_RESOURCE: str(gpus)},
            }
        },
    }
    if node_selector:
        config["pod_spec_config"] = {"node_selector": node_selector}
    return config


def _gib(size: int) -> str:
    return f"{math.ceil(size / GIB)}Gi"


def node_selector(text: str) -> dict[str, str]:
    """``key=value[,key=value]`` as a node selector."""
    pairs = [item.strip().partition("=") for item in text.split(",") if item.strip()]
    if any(not key or not sep or not value for key, sep, value in pairs):
        raise InputError(
            f"${NODE_SELECTOR_ENV}: {text!r} is not key=value[,key=value], e.g. "
            "nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3"
        )
    return {key: value for key, _, value in pairs}


def step_pod_configs(
    assets: Iterable, plans: dict[str | None, Plan], gpus: dict[str | None, int], selector: dict[str, str]
) -> dict[str, dict]:
    """The executor's `per_step_k8s_config`: each GPU op's pod, by op name. A compared model's
    ops share the names of this model's (their keys are ``<model>/<asset>``), so an op's pod
    is the largest its models need."""
    from .common import artefact_of  # common imports this module for GPU_OP_TAGS

    needs: dict[str, tuple[int, int, int]] = {}
    for asset in assets:
        if not isinstance(asset, dg.AssetsDefinition) or "dagster-k8s/config" not in (asset.op.tags or {}):
            continue
        for key in asset.keys:
            model, name = artefact_of(key)
            host, disk = step_needs(plans[model], name)
            old = needs.get(asset.op.name, (0, 0, 0))
            needs[asset.op.name] = (max(old[0], gpus[model]), max(old[1], host), max(old[2], disk))
    return {op: pod_config(*sizes, selector) for op, sizes in needs.items()}


def executor_from_env(config: PretraceConfig, assets: Iterable, demo: bool = False) -> dg.ExecutorDefinition | None:
    """`k8s_job_executor` with each GPU step's pod sized by the plan (`step_pod_configs`) when
    $PRETRACE_EXECUTOR is `k8s`, else None: Dagster's default multiprocess executor.
    dagster-k8s is imported only on a cluster."""
    if os.environ.get(EXECUTOR_ENV, "").lower() != "k8s":
        return None
    from dagster_k8s import k8s_job_executor

    from pretrace.project.device_plan import project_plans
    from pretrace.project.provenance import Project

    project = Project(config, demo=demo)
    plans = {name: planned.plan for name, planned in project_plans(project, largest_shard=True)}
    gpus = {name: owner.config.gpus_per_step for name, owner in project.projects()}
    selector = node_selector(os.environ.get(NODE_SELECTOR_ENV, ""))
    configs = step_pod_configs(assets, plans, gpus, selector)
    return k8s_job_executor.configured({"per_step_k8s_config": configs}, name="k8s_job_executor")
