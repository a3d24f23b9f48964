"""Declarative automation: shards flow through gradients and scores, the report follows batches.

- `document_gradients` and `influence_scores` are `eager`: a partition runs when one of its
  dependencies updates (a re-tokenized shard, a new model, new query gradients) or when it
  becomes missing, once its dependencies exist and nothing upstream is in progress. Updates made
  by a run that also materialized the asset (the sensor's `shard_job`, a backfill of both) are
  ignored, so those partitions are not computed twice.
- `influence_report` runs once per batch: after any `influence_scores` partition updated, and
  only when no `influence_scores` partition is in progress or about to be requested. Ten new
  files mean one report, not ten.

The conditions are applied here, with `map_asset_specs`, so assets/ stays free of scheduling
policy. The automation sensor is declared explicitly so that it starts RUNNING: Dagster's
implicit default automation sensor would do too, but a declared one says so in code and lets
its interval be set ($PRETRACE_AUTOMATION_INTERVAL_S, 30 s by default).
"""

from __future__ import annotations

from typing import Sequence

import dagster as dg

from .sensors import interval_from_env

AUTOMATION_INTERVAL_ENV = "PRETRACE_AUTOMATION_INTERVAL_S"
EAGER_ASSETS = ("document_gradients", "influence_scores")
REPORT_ASSET = "influence_report"

AC = dg.AutomationCondition

REPORT_CONDITION = (
    AC.any_deps_updated().since_last_handled()
    & ~AC.any_deps_match(AC.in_progress() | AC.will_be_requested()).with_label("any_deps_in_progress_or_requested")
    & ~AC.in_progress()
).with_label("once after each batch of scored shards")


def condition_for(key: dg.AssetKey) -> dg.AutomationCondition | None:
    name = key.to_user_string()
    if name in EAGER_ASSETS:
        return AC.eager()
    if name == REPORT_ASSET:
        return REPORT_CONDITION
    return None


def with_automation(assets: Sequence) -> list:
    """The assets, with the conditions above on the ones that have one."""
    def apply(spec: dg.AssetSpec) -> dg.AssetSpec:
        condition = condition_for(spec.key)
        return spec if condition is None else spec.replace_attributes(automation_condition=condition)

    out = []
    for asset in assets:
        if isinstance(asset, dg.AssetsDefinition) and any(condition_for(k) for k in asset.keys):
            out.append(dg.map_asset_specs(apply, [asset])[0])
        else:
            out.append(asset)
    return out


def build_automation_sensor(minimum_interval_seconds: int | None = None) -> dg.AutomationConditionSensorDefinition:
    return dg.AutomationConditionSensorDefinition(
        "pretrace_automation",
        target=dg.AssetSelection.all(),
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=minimum_interval_seconds or interval_from_env(AUTOMATION_INTERVAL_ENV, 30),
        description="Evaluates the assets' automation conditions: eager gradients and scores, one report per batch.",
    )
