"""The Kubernetes job dagster-k8s would create for a document_gradients step, without a cluster.

Built with dagster-k8s's own job-construction code from infra/helm/values.yaml (image, env,
secrets, volumes of the run launcher) and the step's tags (the asset's `dagster-k8s/config`
op tags), the way `k8s_job_executor` builds a step job.
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
from pretrace.assets.k8s import executor_from_env  # noqa: E402
from pretrace.assets.partitions import shard_partitions  # noqa: E402

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


def build_step_job(shard: str):
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
    # k8s_job_executor merges the run launcher's config, then the step's own tags on top.
    merged = UserDefinedDagsterK8sConfig.from_dict(
        {
            **run_config.to_dict(),
            "container_config": {**run_config.container_config, **step_config.container_config},
            "pod_spec_config": step_config.pod_spec_config,
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


def test_a_document_gradients_step_job_requests_one_gpu_on_the_repo_image():
    image, job = build_step_job("part-a.jsonl")
    pod = job.spec.template.spec
    (container,) = pod.containers
    assert container.image == image == "ghcr.io/your-org/pretrace:0.1.0"
    assert container.resources.limits["nvidia.com/gpu"] == "1"
    assert container.resources.requests["nvidia.com/gpu"] == "1"
    assert any(t.key == "nvidia.com/gpu" for t in pod.tolerations)
    env = {e.name: e.value for e in container.env}
    assert env["PRETRACE_EXECUTOR"] == "k8s"
    assert [s.secret_ref.name for s in container.env_from if s.secret_ref] == ["pretrace-s3"]
    assert any(m.mount_path == "/etc/pretrace" for m in container.volume_mounts)


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


def test_the_executor_is_k8s_on_a_cluster_and_the_default_elsewhere(monkeypatch):
    monkeypatch.delenv("PRETRACE_EXECUTOR", raising=False)
    assert executor_from_env() is None
    monkeypatch.setenv("PRETRACE_EXECUTOR", "k8s")
    assert executor_from_env() is dagster_k8s.k8s_job_executor
