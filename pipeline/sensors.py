"""Watching the user's inputs: corpus files become shard partitions, and every input's content
fingerprint is recorded as an observation, so the UI marks what a change made stale.

The same refresh (`find_changes`) runs in the `corpus_sensor` (every minute), which returns it
as its `SensorResult` (partition requests and observations, so each tick shows what it did),
and in the `corpus_refresh_schedule` (pipeline/schedules.py, daily by default), which applies it
and launches the new files' runs. What else must be recomputed is decided by the recompute
policy, and the automation sensor (pipeline/automation.py) launches it. Per tick:

- a new corpus file registers its `shard` partition;
- a corpus file, checkpoint or queries file whose content fingerprint changed gets an
  observation with the new fingerprint as its data version (the UI then shows downstream
  assets as stale; a file merely touched or copied with rounded times does not change);
- a removed (or renamed) file is reported, with the command that removes its artefacts
  (`pretrace clean`); the report already covers only the files present;
- an edit of the code location's pretrace.yaml ($PRETRACE_CONFIG) is named on the tick, each
  setting with its old and new value, and observed on every asset whose artefact depends on it
  (the asset's events say why); the code location is then reloaded through the webserver at
  $PRETRACE_UI_URL (`pretrace ui` sets it), as its Reload button does, so the UI shows the new
  code versions (the assets stale) and automation computes with the new settings. A sensor has
  no handle on the workspace that serves it: Dagster's way is the webserver's GraphQL API.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import urllib.request
from dataclasses import dataclass, field

import dagster as dg

from pretrace.assets.common import asset_key, seconds_from_env
from pretrace.assets.partitions import shard_partitions
from pretrace.config import PretraceConfig, load_config
from pretrace.errors import PretraceError
from pretrace.project.artefacts import label
from pretrace.project.manifests import canonical_json
from pretrace.project.provenance import Project, setting_changes, settings_of
from pretrace.resources.pretrace import PretraceResource

from .settings import CONFIG_ENV

SENSOR_INTERVAL_ENV = "PRETRACE_SENSOR_INTERVAL_S"
UI_URL_ENV = "PRETRACE_UI_URL"  # the webserver serving this code location, to reload it
CLEAN_HINT = "remove their artefacts with `pretrace clean --config <pretrace.yaml>`"
RELOAD_HINT = "reload the code location to compute with them"
RELOADING = "the code location reloads to compute with them"
RELOAD_LOCATION = """
mutation($name: String!) {
  reloadRepositoryLocation(repositoryLocationName: $name) {
    __typename ... on PythonError { message } ... on UnauthorizedError { message }
  }
}"""
SETTINGS_LABEL = "pretrace.yaml"  # the cursor's entry for the settings file
_LOG = logging.getLogger(__name__)


def interval_from_env(name: str, default: int) -> int:
    """A tick interval in whole seconds (Dagster's unit), at least one."""
    return int(seconds_from_env(name, default, minimum=1))


@dataclass
class Refresh:
    new: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    observed: list[str] = field(default_factory=list)  # labels whose fingerprint changed
    fingerprints: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # entries of the corpus folder not read, with why
    observations: list[dg.AssetObservation] = field(default_factory=list)
    settings: list[str] = field(default_factory=list)  # "`key` old -> new" of an edited pretrace.yaml

    @property
    def changed(self) -> bool:
        return bool(self.new or self.observations)

    def summary(self) -> str:
        parts = [f"{len(self.fingerprints)} inputs watched"]
        if self.new:
            parts.append(f"new shards: {', '.join(self.new)}")
        if self.observed:
            parts.append(f"changed: {', '.join(self.observed)}")
        if self.settings:
            parts.append(f"pretrace.yaml changed: {', '.join(self.settings)} ({reload_hint()})")
        if self.removed:
            parts.append(f"corpus files gone: {', '.join(self.removed)} ({CLEAN_HINT})")
        if self.skipped:
            parts.append(f"not read: {'; '.join(self.skipped)}")
        return "; ".join(parts) if len(parts) > 1 else f"no new or changed inputs among {parts[0]}"


def _sources(project: Project, demo: bool) -> dict[tuple[dg.AssetKey, str | None], str]:
    """(source asset, partition) -> content fingerprint of every user input."""
    found = {(dg.AssetKey("corpus_files"), s): project.source("corpus_file", s) for s in project.shards}
    found[(dg.AssetKey("query_file"), None)] = project.source("query_file")
    if not demo:  # each model's checkpoint, a compared model's keyed `<model>/checkpoint`
        for model, owner in project.projects():
            found[(asset_key(model, "checkpoint"), None)] = owner.source("checkpoint")
    return found


def _last_observed(instance: dg.DagsterInstance, key: dg.AssetKey, partition: str | None) -> str | None:
    records = instance.fetch_observations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition] if partition else None), limit=1
    ).records
    return records[0].asset_observation.tags.get("dagster/data_version") if records else None


def find_changes(
    instance: dg.DagsterInstance, resource: PretraceResource, known: dict[str, str] | None = None
) -> Refresh:
    """New shards, removed ones, and an observation for each input whose fingerprint changed;
    nothing is written. ``known`` maps labels to the fingerprints seen last (a sensor's cursor),
    else the instance's latest observations count."""
    project = resource.project()
    registered = set(instance.get_dynamic_partitions(shard_partitions.name))
    refresh = Refresh(
        new=[s for s in project.shards if s not in registered],
        removed=sorted(registered - set(project.shards)),
        skipped=project.listing.skipped,
    )
    for (key, partition), fingerprint in _sources(project, resource.demo).items():
        name = label(key.to_user_string(), partition)
        refresh.fingerprints[name] = fingerprint
        before = known.get(name) if known is not None else _last_observed(instance, key, partition)
        if before != fingerprint:
            refresh.observed.append(name)
            metadata = {"skipped_in_folder": dg.MetadataValue.json(refresh.skipped)} if partition else {}
            refresh.observations.append(
                dg.AssetObservation(
                    key, partition=partition, tags={"dagster/data_version": fingerprint}, metadata=metadata
                )
            )
    _observe_settings(refresh, project, resource.config, known)
    return refresh


def _observe_settings(refresh: Refresh, project: Project, loaded: PretraceConfig, known: dict[str, str] | None) -> None:
    """Name each setting the code location's pretrace.yaml changed since it was loaded, and
    observe it on every asset whose artefact depends on it (once per state of the file)."""
    path = os.environ.get(CONFIG_ENV)
    if not path:
        return
    edited = load_config(path)
    digest = hashlib.sha256(canonical_json(edited.model_dump(mode="json")).encode()).hexdigest()[:16]
    refresh.fingerprints[SETTINGS_LABEL] = digest
    if edited == loaded or (known or {}).get(SETTINGS_LABEL) == digest:
        return
    refresh.settings = setting_changes(loaded.model_dump(mode="json"), edited.model_dump(mode="json"))
    for model, owner in project.projects():
        for artefact in owner.graph.values():
            new = edited.compared(model) if model else edited
            changed = setting_changes(settings_of(artefact, owner.config), settings_of(artefact, new))
            if changed:
                refresh.observations.append(
                    dg.AssetObservation(
                        asset_key(model, artefact.name),
                        metadata={"settings changed": f"{', '.join(changed)} in {path} ({reload_hint()})"},
                    )
                )


def reload_hint() -> str:
    """What happens next after an edit of pretrace.yaml: the location reloads, or the user reloads it."""
    return RELOADING if os.environ.get(UI_URL_ENV) else RELOAD_HINT


def reload_in_background(location: str) -> threading.Thread | None:
    """Ask the webserver at $PRETRACE_UI_URL to reload ``location`` (its GraphQL
    `reloadRepositoryLocation`, the UI's Reload button), once the tick has returned: the reload
    replaces the code server this sensor runs in (a failure is logged by the code server, the
    tick being over). None without a webserver to ask."""
    url = os.environ.get(UI_URL_ENV)
    if not url:
        return None

    def reload() -> None:
        body = json.dumps({"query": RELOAD_LOCATION, "variables": {"name": location}}).encode()
        request = urllib.request.Request(
            f"{url.rstrip('/')}/graphql", data=body, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=300) as response:
                answer = json.loads(response.read())
        except OSError as exc:
            _LOG.warning(f"could not reload the code location {location} through {url}: {exc}; {RELOAD_HINT}")
            return
        result = (answer.get("data") or {}).get("reloadRepositoryLocation") or {}
        if answer.get("errors") or "message" in result:
            _LOG.warning(f"{url} did not reload {location}: {answer.get('errors') or result['message']}; {RELOAD_HINT}")

    thread = threading.Thread(target=reload, name="pretrace-reload", daemon=True)
    thread.start()
    return thread


def refresh_inputs(instance: dg.DagsterInstance, resource: PretraceResource) -> Refresh:
    """`find_changes`, applied to the instance at once: for callers that are not a sensor (the
    schedule, `pretrace run`)."""
    refresh = find_changes(instance, resource)
    if refresh.new:
        instance.add_dynamic_partitions(shard_partitions.name, refresh.new)
    for observation in refresh.observations:
        instance.report_runless_asset_event(observation)
    return refresh


def build_corpus_sensor(minimum_interval_seconds: int | None = None) -> dg.SensorDefinition:
    interval = minimum_interval_seconds or interval_from_env(SENSOR_INTERVAL_ENV, 60)

    @dg.sensor(
        name="corpus_sensor",
        minimum_interval_seconds=interval,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Watch the corpus, the checkpoint and the queries file: new files get shard "
        "partitions, changed content is observed (downstream shows stale), removed files are reported.",
    )
    def corpus_sensor(context: dg.SensorEvaluationContext, pretrace: PretraceResource):
        try:
            refresh = find_changes(context.instance, pretrace, json.loads(context.cursor) if context.cursor else None)
        except PretraceError as exc:  # an unreadable input is the user's to fix: say so on the tick
            return dg.SkipReason(f"cannot read the inputs: {exc}")
        if refresh.removed:
            context.log.warning(f"corpus files gone: {', '.join(refresh.removed)}; {CLEAN_HINT}")
        if refresh.changed:
            context.log.info(refresh.summary())
        if refresh.settings and context.code_location_origin is not None:
            reload_in_background(context.code_location_origin.location_name)
        # The summary is the tick's message too: Dagster calls a tick that requests no run
        # skipped, and lists the partitions it added and the events it reported beside it.
        return dg.SensorResult(
            dynamic_partitions_requests=[shard_partitions.build_add_request(refresh.new)] if refresh.new else None,
            asset_events=refresh.observations,
            skip_reason=dg.SkipReason(refresh.summary()),
            cursor=json.dumps(refresh.fingerprints, sort_keys=True),
        )

    return corpus_sensor


corpus_sensor = build_corpus_sensor()
