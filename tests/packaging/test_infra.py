"""The deployment files in infra/ agree with each other and with the Dagster installed here.

No network, no cluster: the files are parsed and compared. What would break a team deployment
silently fails here instead: a secret written into a config file, step logs left on pod disks,
RBAC switched off, a Dagster upgrade that moved one pin but not the others, a lockfile that no
longer covers pyproject.toml.
"""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import dagster
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
DAGSTER_YAML = yaml.safe_load((INFRA / "dagster.yaml").read_text())
VALUES_TEXT = (INFRA / "helm/values.yaml").read_text()
VALUES = yaml.safe_load(VALUES_TEXT)
DOCKERFILE = (INFRA / "Dockerfile").read_text()
LOCK_TEXT = (INFRA / "requirements.lock").read_text()
INTEGRATIONS = ("dagster-postgres", "dagster-k8s", "dagster-aws")
# S3ComputeLogManager.config_type() of dagster-aws 0.29.27, for machines without dagster-aws
# (test_the_compute_log_config_passes_dagster_aws_own_schema checks against the real class).
S3_LOG_KEYS = {
    "bucket",
    "local_dir",
    "prefix",
    "use_ssl",
    "verify",
    "verify_cert_path",
    "endpoint_url",
    "skip_empty_files",
    "upload_interval",
    "upload_extra_args",
    "show_url_only",
    "region",
}
SECRET_KEY = re.compile(r"password|secret|access_key|key_id|token|credential", re.I)


def integration_version(dagster_version: str) -> str:
    """Dagster's integration libraries are numbered 0.<minor+16>.<patch> of their dagster release."""
    major, minor, patch = dagster_version.split(".")[:3]
    assert major == "1", f"the 0.<minor+16> numbering holds for dagster 1.x, not {dagster_version}"
    return f"0.{int(minor) + 16}.{patch}"


def locked() -> dict[str, str]:
    """The lockfile's packages, canonical name -> version; every requirement line must be `name==version`."""
    pins = {}
    for line in LOCK_TEXT.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][^\s;#]*)", line.strip())
        assert match, f"infra/requirements.lock: not an exact pin: {line!r}"
        pins[canonicalize_name(match[1])] = match[2]
    return pins


def makefile_torch() -> str:
    (version,) = re.findall(r"^TORCH_SPEC \?= torch==(\S+)$", (ROOT / "Makefile").read_text(), re.M)
    return version


def env_var(source) -> str:
    """The variable of a `{env: NAME}` config source; fails on a literal value."""
    assert isinstance(source, dict) and list(source) == ["env"], f"expected {{env: NAME}}, got {source!r}"
    return source["env"]


def leaves(node, path=()):
    if isinstance(node, dict):
        if list(node) == ["env"]:
            yield path, node
            return
        for key, value in node.items():
            yield from leaves(value, (*path, str(key)))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from leaves(value, (*path, str(i)))
    else:
        yield path, node


# --- compute logs in S3 ---------------------------------------------------------------------


def test_the_instance_stores_step_logs_in_s3_with_bucket_and_prefix_from_the_environment():
    logs = DAGSTER_YAML["compute_logs"]
    assert (logs["module"], logs["class"]) == ("dagster_aws.s3.compute_log_manager", "S3ComputeLogManager")
    config = logs["config"]
    assert env_var(config["bucket"]) and env_var(config["prefix"])
    assert set(config) <= S3_LOG_KEYS, f"unknown S3ComputeLogManager keys: {set(config) - S3_LOG_KEYS}"


def test_the_helm_values_store_step_logs_in_s3_like_the_instance_config():
    manager = VALUES["computeLogManager"]
    assert manager["type"] == "S3ComputeLogManager"
    assert list(manager["config"]) == ["s3ComputeLogManager"]
    helm = manager["config"]["s3ComputeLogManager"]
    # The chart renders camelCase keys into dagster.yaml's snake_case: the same settings both ways.
    snake = {re.sub(r"[A-Z]", lambda c: "_" + c[0].lower(), k): v for k, v in helm.items()}
    assert snake == DAGSTER_YAML["compute_logs"]["config"]


def test_every_pod_that_loads_the_instance_gets_the_compute_log_variables_and_the_s3_credentials():
    (deployment,) = VALUES["dagster-user-deployments"]["deployments"]
    holders = {
        "webserver (and the migrate job)": VALUES["dagsterWebserver"],
        "daemon": VALUES["dagsterDaemon"],
        "run and step pods": VALUES["runLauncher"]["config"]["k8sRunLauncher"],
        "code server": deployment,
    }
    for who, spec in holders.items():
        assert {"name": "pretrace-compute-logs"} in spec.get("envConfigMaps", []), who
        assert {"name": "pretrace-s3"} in spec.get("envSecrets", []), who
    # The ConfigMap the header tells you to create holds exactly the variables the config names.
    config = VALUES["computeLogManager"]["config"]["s3ComputeLogManager"]
    for name in (env_var(config["bucket"]), env_var(config["prefix"])):
        assert f"--from-literal={name}=" in VALUES_TEXT


def test_no_credential_is_written_into_the_instance_config_or_the_values():
    for name, tree in {"infra/dagster.yaml": DAGSTER_YAML, "infra/helm/values.yaml": VALUES}.items():
        for path, value in leaves(tree):
            # A secret's *name* (global.postgresqlSecretName) is fine; a secret's value is not.
            if SECRET_KEY.search(path[-1]) and not path[-1].endswith("SecretName"):
                literal = isinstance(value, str | int) and not isinstance(value, bool)
                assert not literal, f"{name}: {'.'.join(path)} is a literal, use {{env: ...}}"
    for name, text in {"dagster.yaml": (INFRA / "dagster.yaml").read_text(), "values.yaml": VALUES_TEXT}.items():
        assert not re.search(r"\bA(KIA|SIA)[0-9A-Z]{16}\b", text), f"{name} holds an AWS access key id"
        # Naming the variables is fine; giving them a value is not, beyond the header's `=...`.
        for value in re.findall(r"(?i)aws_(?:secret_access_key|access_key_id|session_token)\s*[:=]\s*(\S*)", text):
            assert value == "...", f"{name} sets an AWS credential"


# --- RBAC -------------------------------------------------------------------------------------


def test_rbac_lets_run_pods_launch_their_step_jobs():
    assert VALUES["rbacEnabled"] is True
    account = VALUES["serviceAccount"]
    assert account["create"] is True and account["name"]
    # The chart's Role lives in the release namespace: step jobs elsewhere would be refused.
    assert not VALUES["runLauncher"]["config"]["k8sRunLauncher"].get("jobNamespace")
    # The migrate job runs only during an upgrade (docs/operations.md).
    assert VALUES["migrate"]["enabled"] is False


# --- GPU step pods ---------------------------------------------------------------------------

CHECKPOINT_VOLUME = list(yaml.safe_load_all((INFRA / "checkpoint-volume.yaml").read_text()))


def test_every_pretrace_pod_mounts_the_checkpoint_volume_read_only_at_one_path():
    """The code server (it plans from the checkpoint's config) and the run and step pods (they load
    it) read the checkpoint from the volume the fill job wrote, so no step pod downloads it."""
    claim, fill = CHECKPOINT_VOLUME
    assert claim["kind"] == "PersistentVolumeClaim" and fill["kind"] == "Job"
    (deployment,) = VALUES["dagster-user-deployments"]["deployments"]
    launcher = VALUES["runLauncher"]["config"]["k8sRunLauncher"]
    paths = set()
    for holder in (deployment, launcher):
        (volume,) = [v for v in holder["volumes"] if "persistentVolumeClaim" in v]
        assert volume["persistentVolumeClaim"] == {"claimName": claim["metadata"]["name"], "readOnly": True}
        (mount,) = [m for m in holder["volumeMounts"] if m["name"] == volume["name"]]
        assert mount["readOnly"] is True
        paths.add(mount["mountPath"])
    (path,) = paths
    spec = fill["spec"]["template"]["spec"]
    (volume,) = spec["volumes"]
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    (container,) = spec["containers"]
    assert container["volumeMounts"] == [{"name": volume["name"], "mountPath": path}]
    target = next(e["value"] for e in container["env"] if e["name"] == "TARGET")
    assert target.startswith(path + "/")  # where pretrace.yaml's `model:` points
    assert container["image"].split(":")[0] == deployment["image"]["repository"]


def test_the_code_server_and_the_run_pods_select_the_same_gpu_nodes():
    """The run pod sizes its steps' pods (it loads the definitions again): both read one selector."""
    (deployment,) = VALUES["dagster-user-deployments"]["deployments"]
    served = {e["name"]: e["value"] for e in deployment["env"]}
    launched = dict(v.split("=", 1) for v in VALUES["runLauncher"]["config"]["k8sRunLauncher"]["envVars"])
    assert served["PRETRACE_GPU_NODE_SELECTOR"] == launched["PRETRACE_GPU_NODE_SELECTOR"]
    assert served["PRETRACE_EXECUTOR"] == launched["PRETRACE_EXECUTOR"] == "k8s"


# --- one Dagster version everywhere -----------------------------------------------------------


def test_the_integration_numbering_matches_what_is_installed():
    for name in ("dagster-k8s", "dagster-postgres"):
        assert metadata.version(name) == integration_version(dagster.__version__), name


def test_the_helm_command_installs_the_chart_of_the_installed_dagster():
    commands = [line for line in VALUES_TEXT.splitlines() if "helm upgrade --install" in line]
    assert commands, "infra/helm/values.yaml names no `helm upgrade --install` command"
    for line in commands:
        assert re.search(rf"--version {re.escape(dagster.__version__)}(\s|$)", line), line
    docs = (ROOT / "docs/operations.md").read_text()
    assert f"dagster/dagster --version {dagster.__version__} " in docs


def test_the_dockerfile_pins_python_torch_and_the_integrations():
    (from_line,) = re.findall(r"^FROM .*$", DOCKERFILE, re.M)
    match = re.fullmatch(r"FROM python:(\d+)\.(\d+)\.(\d+)-slim-\w+", from_line)
    assert match, f"not an exact Python patch tag: {from_line}"
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert requires == f">={match[1]}.{match[2]}", (from_line, requires)
    assert re.findall(r'"torch==([^"]+)"', DOCKERFILE) == [makefile_torch()]
    expected = integration_version(dagster.__version__)
    pins = dict(re.findall(r'"(dagster-[a-z0-9-]+)==([^"]+)"', DOCKERFILE))
    assert pins == dict.fromkeys(INTEGRATIONS, expected)


def test_every_pip_install_in_the_dockerfile_is_constrained_by_the_lockfile():
    runs = [r for r in re.findall(r"^RUN (.*?)(?<!\\)$", DOCKERFILE, re.M | re.S) if "pip install" in r]
    assert len(runs) >= 2, "expected torch's install and the project's"
    for run in runs:
        for command in re.split(r"&&|;", run):
            if "pip install" in command:
                assert "-c infra/requirements.lock" in command, command.strip()
    # Copied before the first install that reads it.
    assert DOCKERFILE.index("COPY infra/requirements.lock") < DOCKERFILE.index("pip install")


# --- the lockfile -----------------------------------------------------------------------------


def test_the_lockfile_pins_every_package_and_the_installed_dagster():
    pins = locked()
    assert pins["dagster"] == dagster.__version__
    for name in ("dagster-webserver", "dagster-graphql", "dagster-pipes", "dagster-shared"):
        assert pins[name] == dagster.__version__, name
    for name in INTEGRATIONS:
        assert pins[name] == integration_version(dagster.__version__), name
    assert pins["torch"] == makefile_torch()
    assert "make lock" in LOCK_TEXT.split("\n", 3)[1], "the header should say how to regenerate it"


def test_the_lockfile_covers_pyproject_and_requirements_in():
    """A dependency added to pyproject.toml or infra/requirements.in without `make lock` fails here."""
    pins = locked()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    inputs = [
        line.split("#")[0].strip()
        for line in (INFRA / "requirements.in").read_text().splitlines()
        if line.split("#")[0].strip()
    ]
    for text in [*project["dependencies"], *inputs]:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not in infra/requirements.lock: run `make lock`"
        assert req.specifier.contains(pins[name], prereleases=True), f"{text} vs locked {pins[name]}"


def test_make_lock_regenerates_the_lockfile():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^\.PHONY:.*\block\b", makefile, re.M)
    assert re.search(r"^lock:\n\t.*infra/lock\.sh", makefile, re.M)


# --- Dagster's own validation -----------------------------------------------------------------


@pytest.fixture
def instance_env(monkeypatch):
    for name, value in {
        "DAGSTER_PG_HOST": "db",
        "DAGSTER_PG_PORT": "5432",
        "DAGSTER_PG_DB": "dagster",
        "DAGSTER_PG_USER": "dagster",
        "DAGSTER_PG_PASSWORD": "x",
        "DAGSTER_COMPUTE_LOGS_BUCKET": "logs",
        "DAGSTER_COMPUTE_LOGS_PREFIX": "pretrace/compute-logs",
    }.items():
        monkeypatch.setenv(name, value)


def test_infra_dagster_yaml_loads_with_dagsters_instance_schema(instance_env):
    from dagster._core.instance.config import dagster_instance_config

    # The loader Dagster itself uses: schema plus the cross-field checks (e.g. run limits
    # belong under `concurrency.runs` once pools are configured).
    config, _ = dagster_instance_config(str(INFRA))
    assert config["compute_logs"]["class"] == "S3ComputeLogManager"
    assert config["concurrency"]["pools"]["default_limit"] == 1
    assert config["run_monitoring"]["free_slots_after_run_end_seconds"] > 0
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"


def test_the_compute_log_config_passes_dagster_aws_own_schema(instance_env):
    """Skipped where dagster-aws is not installed (the dev venv); the image has it."""
    compute_log_manager = pytest.importorskip("dagster_aws.s3.compute_log_manager")
    from dagster._config import process_config
    from dagster._config.field import resolve_to_config_type

    cls = compute_log_manager.S3ComputeLogManager
    result = process_config(resolve_to_config_type(cls.config_type()), DAGSTER_YAML["compute_logs"]["config"])
    assert result.success, result.errors
    assert result.value["bucket"] == "logs" and result.value["prefix"] == "pretrace/compute-logs"
    assert set(cls.config_type()) == S3_LOG_KEYS
