"""Kubernetes settings the GPU-heavy assets carry in their own op tags.

`dagster-k8s/config` on an asset's op tags is read by dagster-k8s's `k8s_job_executor` when it
launches that step as its own Kubernetes job, whoever launched the run (UI, backfill, sensor,
automation). Job-level tags would not reach runs launched outside the job, hence op tags.
Merged with the run launcher's and executor's settings from infra/helm/values.yaml.
"""

GPU_RESOURCE = "nvidia.com/gpu"

GPU_K8S_CONFIG = {
    "container_config": {
        "resources": {
            "requests": {"cpu": "4", "memory": "32Gi", GPU_RESOURCE: "1"},
            "limits": {"memory": "48Gi", GPU_RESOURCE: "1"},
        },
    },
    "pod_spec_config": {
        "tolerations": [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}],
    },
}

GPU_OP_TAGS = {"dagster-k8s/config": GPU_K8S_CONFIG}

EXECUTOR_ENV = "PRETRACE_EXECUTOR"


def executor_from_env():
    """`k8s_job_executor` (one Kubernetes job per step, so each GPU step gets its own GPU pod)
    when $PRETRACE_EXECUTOR is `k8s` (set by infra/helm/values.yaml), else None: Dagster's default
    multiprocess executor. dagster-k8s is imported only on a cluster."""
    import os

    if os.environ.get(EXECUTOR_ENV, "").lower() != "k8s":
        return None
    from dagster_k8s import k8s_job_executor

    return k8s_job_executor
