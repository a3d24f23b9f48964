"""The code location `workspace.yaml` loads: the demo, or the pipeline of $PRETRACE_CONFIG."""

from __future__ import annotations

import hashlib

import dagster as dg

from assets.checks import CHECKS
from assets.corpus import corpus_files, corpus_shards
from assets.ekfac import ekfac_covariances, ekfac_eigenbasis, ekfac_factors, ekfac_lambdas
from assets.evaluation import attribution_eval
from assets.gradients import document_gradients
from assets.k8s import executor_from_env
from assets.model import checkpoint, demo_model, user_model
from assets.queries import completions, queries, query_file, query_gradients
from assets.report import influence_report
from assets.scores import influence_scores
from pretrace.config import PretraceConfig
from pretrace.layout import artefacts, canonical_json
from pretrace.provenance import settings_of
from resources.pretrace import PretraceResource

from .automation import OutOfDate, build_automation_sensor
from .jobs import JOBS
from .schedules import build_refresh_schedule
from .sensors import build_corpus_sensor
from .settings import workspace_config

SHARED_ASSETS = [
    corpus_files, query_file, corpus_shards, ekfac_covariances, ekfac_eigenbasis, ekfac_lambdas, ekfac_factors,
    queries, completions, query_gradients, document_gradients, influence_scores, attribution_eval, influence_report,
]


def with_policy(assets: list, resource: PretraceResource) -> list:
    """Every materializable asset as the recompute policy sees it: its code version is its
    artefact's code version plus a digest of the settings its bytes depend on (a changed setting
    shows in the UI as a changed code version, stale, exactly when the policy calls the artefact
    stale for it), and `OutOfDate` keeps it current."""
    table = artefacts(resource.demo)
    condition = OutOfDate(resource)

    def spec_of(spec: dg.AssetSpec) -> dg.AssetSpec:
        artefact = table[spec.key.to_user_string()]
        digest = hashlib.sha256(canonical_json(settings_of(artefact, resource.config)).encode()).hexdigest()[:8]
        return spec.replace_attributes(code_version=f"{artefact.code_version}-{digest}", automation_condition=condition)

    return [dg.map_asset_specs(spec_of, [a])[0] if isinstance(a, dg.AssetsDefinition) and a.is_materializable else a
            for a in assets]


def build_definitions(config: PretraceConfig, demo: bool = False) -> dg.Definitions:
    """The asset graph of DESIGN.md over one configuration; the demo trains its own model."""
    resource = PretraceResource.from_config(config, demo)
    model_assets = [demo_model] if demo else [checkpoint, user_model]
    return dg.Definitions(
        assets=with_policy([*SHARED_ASSETS, *model_assets], resource),
        asset_checks=CHECKS,
        jobs=JOBS,
        schedules=[build_refresh_schedule()],
        sensors=[build_corpus_sensor(), build_automation_sensor()],
        resources={"pretrace": resource},
        executor=executor_from_env(),  # k8s_job_executor on a cluster, so GPU op tags reach pods
    )


defs = build_definitions(*workspace_config())
