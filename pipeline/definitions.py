"""The code location `workspace.yaml` loads: the demo, or the pipeline of $PRETRACE_CONFIG."""

from __future__ import annotations

import hashlib

import dagster as dg

from pretrace.assets.common import artefact_of
from pretrace.assets.comparison import build_model_comparison
from pretrace.assets.corpus import corpus_files, corpus_shards
from pretrace.assets.ekfac import ekfac_covariances, ekfac_eigenbasis, ekfac_factors, ekfac_lambdas, fitting_assets
from pretrace.assets.evaluation import EIGENBASIS_ATTRIBUTION_EVAL, attribution_eval
from pretrace.assets.gradients import EIGENBASIS_DOCUMENT_GRADIENTS, document_gradients
from pretrace.assets.k8s import executor_from_env
from pretrace.assets.model import checkpoint, checkpoint_source, demo_model, user_model
from pretrace.assets.queries import completions, queries, query_file, query_gradients
from pretrace.assets.report import build_report_with_comparison, influence_report
from pretrace.assets.retrieval import reranked_scores
from pretrace.assets.scores import influence_scores
from pretrace.config import PretraceConfig
from pretrace.project.manifests import canonical_json
from pretrace.project.provenance import settings_of
from pretrace.resources.pretrace import PretraceResource

from .automation import OutOfDate, build_automation_sensor
from .jobs import JOBS
from .schedules import build_refresh_schedule
from .sensors import build_corpus_sensor
from .settings import workspace_config

INPUT_ASSETS = [corpus_files, query_file]  # the user's corpus and queries, shared by every compared model
MODEL_ASSETS = [
    corpus_shards,
    ekfac_covariances,
    ekfac_eigenbasis,
    ekfac_lambdas,
    ekfac_factors,
    queries,
    completions,
    query_gradients,
    document_gradients,
    influence_scores,
    reranked_scores,
    attribution_eval,
    influence_report,
]


IN_EIGENBASIS = {document_gradients: EIGENBASIS_DOCUMENT_GRADIENTS, attribution_eval: EIGENBASIS_ATTRIBUTION_EVAL}
"""What a projection in the eigenbasis (`PretraceConfig.projects_with_factors`) makes read the factors."""


def model_graph(demo: bool, config: PretraceConfig) -> list:
    """One model's assets: the checkpoint (or the demo's trained model) through the report; the
    fitting assets partitioned by layer group when there are several."""
    variants = dict(zip((ekfac_covariances, ekfac_eigenbasis, ekfac_lambdas), fitting_assets(config.layer_groups or 1)))
    if config.projects_with_factors:
        variants |= IN_EIGENBASIS
    assets = [variants.get(a, a) for a in MODEL_ASSETS]
    return [*assets, *([demo_model] if demo else [checkpoint, user_model])]


def with_policy(assets: list, resource: PretraceResource) -> list:
    """Every materializable asset as the recompute policy sees it: its code version is its
    artefact's code version plus a digest of the settings its bytes depend on (a changed setting
    shows in the UI as a changed code version, stale, exactly when the policy calls the artefact
    stale for it), and `OutOfDate` keeps it current."""
    project = resource.project()
    condition = OutOfDate(resource)

    def spec_of(spec: dg.AssetSpec) -> dg.AssetSpec:
        model, name = artefact_of(spec.key)
        owner = project.compared(model)
        artefact = owner.graph[name]
        digest = hashlib.sha256(canonical_json(settings_of(artefact, owner.config)).encode()).hexdigest()[:8]
        return spec.replace_attributes(code_version=f"{artefact.code_version}-{digest}", automation_condition=condition)

    return [
        dg.map_asset_specs(spec_of, [a])[0] if isinstance(a, dg.AssetsDefinition) and a.is_materializable else a
        for a in assets
    ]


def compared_graph(name: str, demo: bool, config: PretraceConfig) -> list:
    """A compared model's assets (``config``: its settings): the same graph under keys
    ``<name>/...`` in group ``model_<name>``, reading the shared corpus and queries."""
    own = [a for a in model_graph(demo, config) if a is not checkpoint]
    renamed = {key: dg.AssetKey([name, *key.path]) for a in own for key in a.keys} | {
        checkpoint.key: dg.AssetKey([name, "checkpoint"])
    }
    moved = [a.with_attributes(asset_key_replacements=renamed) for a in own]
    group = f"model_{name}"
    return [
        *dg.map_asset_specs(lambda spec: spec.replace_attributes(group_name=group), moved),
        *([] if demo else [checkpoint_source(name, group)]),
    ]


def build_definitions(config: PretraceConfig, demo: bool = False) -> dg.Definitions:
    """The asset graph of DESIGN.md over one configuration; the demo trains its own model."""
    resource = PretraceResource.from_config(config, demo)
    compared = list(config.compare_models)
    main = model_graph(demo, config)
    comparison = []
    if compared:  # the report reads the comparison
        comparison = [build_model_comparison(compared)]
        main = [build_report_with_comparison() if a is influence_report else a for a in main]
    graphs = [asset for name in compared for asset in compared_graph(name, demo, config.compared(name))]
    assets = with_policy([*INPUT_ASSETS, *main, *graphs, *comparison], resource)
    return dg.Definitions(
        assets=assets,
        jobs=JOBS,
        schedules=[build_refresh_schedule()],
        sensors=[build_corpus_sensor(), build_automation_sensor()],
        resources={"pretrace": resource},
        executor=executor_from_env(config, assets, demo),  # on a cluster: k8s_job_executor, GPU pods sized by the plan
    )


defs = build_definitions(*workspace_config())
