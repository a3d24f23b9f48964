"""The code location `workspace.yaml` loads: the demo, or the pipeline of $PRETRACE_CONFIG."""

from __future__ import annotations

import dagster as dg

from assets.corpus import corpus_files, corpus_shards
from assets.ekfac import ekfac_covariances, ekfac_eigenbasis, ekfac_factors, ekfac_lambdas
from assets.gradients import document_gradients
from assets.model import demo_model, user_model
from assets.queries import queries, query_gradients
from assets.report import influence_report
from assets.scores import influence_scores
from pretrace.config import PretraceConfig
from resources.settings import resources_from_config

from .jobs import JOBS
from .sensors import corpus_sensor
from .settings import workspace_config

SHARED_ASSETS = [
    corpus_files, corpus_shards, ekfac_covariances, ekfac_eigenbasis, ekfac_lambdas, ekfac_factors,
    queries, query_gradients, document_gradients, influence_scores, influence_report,
]


def build_definitions(config: PretraceConfig, demo: bool = False) -> dg.Definitions:
    """The asset graph of DESIGN.md over one configuration; the demo trains its own model."""
    return dg.Definitions(
        assets=[*SHARED_ASSETS, demo_model if demo else user_model],
        jobs=JOBS,
        sensors=[corpus_sensor],
        resources=resources_from_config(config),
    )


defs = build_definitions(*workspace_config())
