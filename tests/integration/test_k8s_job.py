"""The Kubernetes job dagster-k8s would create for a document_gradients step, without a cluster.

Built with dagster-k8s's own job-construction code from infra/helm/values.yaml (image, env,
secrets, volumes of the run launcher), the step's tags (the asset's `dagster-k8s/config` op
tags) and the executor's per-step config (the pod sized by the plan), the way
`k8s_job_executor` builds a step job.
"""

from pathlib import Path

import dagster as dg
import pytest
import yaml

dagster_k8s = pytest.importorskip("dagster_k8s")
from dagster._core.execution.api import create_execution_plan  # noqa: E402
from dagster_k8s.job import (  # noqa: E402
    DagsterK8sJobConfig,
    UserDefinedDagsterK8sConfig,
    construct_dagster_k8s_job,
    get_user_defined_k8s_config,
)

from pretrace.assets.gradients import document_gradients  # noqa: E402
from pretrace.assets.k8s import GIB, executor_from_env, node_selector, step_pod_configs  # noqa: E402
from pretrace.assets.partitions import shard_partitions  # noqa: E402
from pretrace.config import load_config  # noqa: E402
from pretrace.errors import InputError  # noqa: E402
from pretrace.pipeline.definitions import build_definitions  # noqa: E402
from pretrace.planning.memory_plan import Plan, Step  # noqa: E402
from pretrace.project.device_plan import project_plans  # noqa: E402
from pretrace.project.provenance import Project  # noqa: E402
from pretrace.testing.project import make_project  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
VALUES = yaml.safe_load((ROOT / "infra/helm/values.yaml").read_text())


def _snake(d):
    """Helm values are camelCase; dagster-k8s's user-defined config takes snake_case keys at the top."""
    return {"".join("_" + c.lower() if c.isupper() else c for c in k): v for k, v in d.items()}


def step_tags(shard: str) -> dict:
    job = dg.Definitions(
        assets=[document_gradients],
        resources={
            k: dg.ResourceDefinition.none_resource()
            for k in document_gradients.required_resource_keys
            if k != "io_manager"
        },
        jobs=[dg.define_asset_job("gradients", selection=[document_gradients], partitions_def=shard_partitions)],
    ).resolve_job_def("gradients")
    plan = create_execution_plan(job, tags={"dagster/partition": shard})
    (step,) = plan.steps
    return dict(step.tags)


def build_step_job(shard: str, per_step: dict):
    deployment = VALUES["dagster-user-deployments"]["deployments"][0]
    launcher = VALUES["runLauncher"]["config"]["k8sRunLauncher"]
    image = f"{deployment['image']['repository']}:{deployment['image']['tag']}"
    job_config = DagsterK8sJobConfig(
        job_image=image,
        dagster_home="/opt/dagster/dagster_home",
        image_pull_policy=deployment["image"]["pullPolicy"],
        instance_config_map="pretrace-instance",
        env_secrets=[s["name"] for s in launcher["envSecrets"]],
        env_vars=launcher["envVars"],
        volume_mounts=launcher["volumeMounts"],
        volumes=launcher["volumes"],
    )
    run_config = UserDefinedDagsterK8sConfig.from_dict(
        {"container_config": _snake(launcher["runK8sConfig"]["containerConfig"])}
    )
    step_config = get_user_defined_k8s_config(step_tags(shard))
    sized = UserDefinedDagsterK8sConfig.from_dict(per_step)
    # k8s_job_executor merges the run launcher's config, the step's own tags, then its per-step config.
    merged = UserDefinedDagsterK8sConfig.from_dict(
        {
            **run_config.to_dict(),
            "container_config": {
                **run_config.container_config,
                **step_config.container_config,
                **sized.container_config,
            },
            "pod_spec_config": {**step_config.pod_spec_config, **sized.pod_spec_config},
        }
    )
    return image, construct_dagster_k8s_job(
        job_config,
        args=["dagster", "api", "execute_step"],
        job_name="dagster-step-document-gradients",
        user_defined_k8s_config=merged,
        labels={"dagster/partition": shard},
        component="step_worker",
    )


PLAN = Plan(
    [
        Step("covariances", {"activations": GIB}, host=7 * GIB, disk=GIB),
        Step("scores", {}, host=100 * GIB, disk=30 * GIB),
    ]
)


def test_a_document_gradients_step_job_is_sized_by_the_plan_and_the_settings():
    selector = {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    per_step = step_pod_configs([document_gradients], {None: PLAN}, {None: 2}, selector)
    image, job = build_step_job("part-a.jsonl", per_step["document_gradients"])
    pod = job.spec.template.spec
    (container,) = pod.containers
    assert container.image == image == "ghcr.io/your-org/pretrace:0.1.0"
    # two GPUs (gpus_per_step), the plan's scoring step: 100 GiB of host memory plus 8 GiB per GPU process,
    # 30 GiB of disk plus 10 GiB of scratch
    assert container.resources.requests == {
        "cpu": "8",
        "memory": "116Gi",
        "ephemeral-storage": "40Gi",
        "nvidia.com/gpu": "2",
    }
    assert container.resources.limits == {"memory": "116Gi", "nvidia.com/gpu": "2"}
    assert pod.node_selector == selector
    assert any(t.key == "nvidia.com/gpu" for t in pod.tolerations)
    env = {e.name: e.value for e in container.env}
    assert env["PRETRACE_EXECUTOR"] == "k8s"
    assert env["PRETRACE_GPU_NODE_SELECTOR"] == "nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3"
    assert [s.secret_ref.name for s in container.env_from if s.secret_ref] == ["pretrace-s3"]
    assert any(m.mount_path == "/etc/pretrace" for m in container.volume_mounts)
    (checkpoint,) = [m for m in container.volume_mounts if m.mount_path == "/models"]
    assert checkpoint.read_only  # the checkpoint volume, never written by a step


def test_the_executor_sizes_each_gpu_step_from_the_projects_plan_and_gpus_per_step(tmp_path, monkeypatch):
    monkeypatch.setenv("PRETRACE_EXECUTOR", "k8s")
    monkeypatch.setenv("PRETRACE_GPU_NODE_SELECTOR", "nvidia.com/gpu.product=NVIDIA-H200")
    config = load_config(make_project(tmp_path, gpus_per_step=3))
    resolved = build_definitions(config).executor.apply_config_mapping({})
    per_step = resolved.value["config"]["per_step_k8s_config"]
    assert "corpus_shards" not in per_step and "influence_report" not in per_step  # no GPU there
    ((_, planned),) = project_plans(Project(config), largest_shard=True)
    for op, step in (("ekfac_covariances", "covariances"), ("document_gradients", "scores")):
        requests = per_step[op]["container_config"]["resources"]["requests"]
        assert requests["nvidia.com/gpu"] == "3" and requests["cpu"] == "12"
        host = planned.plan.step(step).host
        assert requests["memory"] == f"{-(-(host + 3 * 8 * GIB) // GIB)}Gi"
        assert per_step[op]["pod_spec_config"]["node_selector"] == {"nvidia.com/gpu.product": "NVIDIA-H200"}


def test_a_bad_node_selector_is_one_clear_line():
    assert node_selector("") == {}
    assert node_selector("a=b, c=d") == {"a": "b", "c": "d"}
    with pytest.raises(InputError, match=r"\$PRETRACE_GPU_NODE_SELECTOR: 'h100' is not key=value"):
        node_selector("h100")


def test_the_helm_values_configure_the_k8s_launcher_postgres_pool_and_monitoring():
    assert VALUES["runLauncher"]["type"] == "K8sRunLauncher"
    assert VALUES["postgresql"]["enabled"] is False and VALUES["global"]["postgresqlSecretName"]
    assert VALUES["concurrency"]["pools"]["defaultLimit"] >= 1
    assert VALUES["dagsterDaemon"]["runMonitoring"]["enabled"] is True
    assert VALUES["dagsterDaemon"]["runCoordinator"]["type"] == "QueuedRunCoordinator"
    # the chart renders both into dagster.yaml, and 1.13 refuses queue limits beside pools
    assert "config" not in VALUES["dagsterDaemon"]["runCoordinator"]
    assert "AWS_SECRET_ACCESS_KEY" not in (ROOT / "infra/helm/values.yaml").read_text().replace(
        "--from-literal=AWS_SECRET_ACCESS_KEY=...", ""
    )


def test_the_executor_is_k8s_on_a_cluster_and_the_default_elsewhere(tmp_path, monkeypatch):
    config = load_config(make_project(tmp_path))
    monkeypatch.delenv("PRETRACE_EXECUTOR", raising=False)
    assert executor_from_env(config, []) is None
    monkeypatch.setenv("PRETRACE_EXECUTOR", "k8s")
    assert executor_from_env(config, []).executor_creation_fn is dagster_k8s.k8s_job_executor.executor_creation_fn
