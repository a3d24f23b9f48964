"""The code location `workspace.yaml` loads: the demo, or the pipeline of $PRETRACE_CONFIG."""

from __future__ import annotations

import dagster as dg

from assets.corpus import corpus_files, corpus_shards
from assets.ekfac import ekfac_covariances, ekfac_eigenbasis, ekfac_factors, ekfac_lambdas
from assets.gradients import document_gradients
from assets.k8s import executor_from_env
from assets.model import demo_model, user_model
from assets.queries import queries, query_gradients
from assets.report import influence_report
from assets.scores import influence_scores
from pretrace.config import PretraceConfig
from resources.settings import resources_from_config

from .automation import build_automation_sensor, with_automation
from .jobs import JOBS
from .schedules import build_refresh_schedule
from .sensors import build_corpus_sensor
from .settings import workspace_config

SHARED_ASSETS = [
    corpus_files, corpus_shards, ekfac_covariances, ekfac_eigenbasis, ekfac_lambdas, ekfac_factors,
    queries, query_gradients, document_gradients, influence_scores, influence_report,
]


def build_definitions(config: PretraceConfig, demo: bool = False) -> dg.Definitions:
    """The asset graph of DESIGN.md over one configuration; the demo trains its own model."""
    return dg.Definitions(
        assets=with_automation([*SHARED_ASSETS, demo_model if demo else user_model]),
        jobs=JOBS,
        schedules=[build_refresh_schedule()],
        sensors=[build_corpus_sensor(), build_automation_sensor()],
        resources=resources_from_config(config),
        executor=executor_from_env(),  # k8s_job_executor on a cluster, so GPU op tags reach pods
    )


defs = build_definitions(*workspace_config())
