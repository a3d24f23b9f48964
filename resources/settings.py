"""The pretrace.yaml keys, split by concern into Dagster resources.

Each resource's fields carry the YAML key names, so the launchpad and pretrace.yaml read the
same; values are validated by `pretrace.config.PretraceConfig`, the one schema, whenever an
asset asks for them. Fields whose YAML forms are unions (damping, projection, fit_shards) are
typed `Any` here and checked there.
"""

from __future__ import annotations

from typing import Any, Optional

import dagster as dg

from pretrace.config import PretraceConfig, parse_config
from pretrace.model import LoadedModel, load_model
from pretrace.storage import Storage


class StorageResource(dg.ConfigurableResource):
    """Where every artefact lives: a local folder or s3://bucket/prefix."""

    storage: str = "./data"

    def open(self) -> Storage:
        return Storage(self.storage)


class ComputeResource(dg.ConfigurableResource):
    """Where and how the model runs."""

    device: str = "auto"
    dtype: str = "float32"
    batch_size: int = 8


class ModelResource(dg.ConfigurableResource):
    """The model under study and which of its linear layers are tracked."""

    model: str = "./checkpoints/my-model"
    layers: list[str] = ["mlp"]
    trust_remote_code: bool = False


class InfluenceResource(dg.ConfigurableResource):
    """Inputs and settings of the influence computation."""

    corpus: str = "./corpus"
    queries: str = "./queries.jsonl"
    fisher: str = "sampled"
    damping: Any = 0.1
    projection: Any = "none"
    query_rank: Optional[int] = None
    max_length: int = 512
    fit_shards: Any = "all"
    seed: int = 0
    top_k: int = 50


RESOURCE_CLASSES = {
    "storage": StorageResource,
    "compute": ComputeResource,
    "model_settings": ModelResource,
    "influence": InfluenceResource,
}


def resources_from_config(config: PretraceConfig) -> dict[str, dg.ConfigurableResource]:
    """The Dagster resources holding a validated configuration."""
    values = config.model_dump(mode="json")
    return {key: cls(**{f: values[f] for f in cls.model_fields}) for key, cls in RESOURCE_CLASSES.items()}


def config_from_resources(*resources: dg.ConfigurableResource) -> PretraceConfig:
    """Validate the resources' fields together against the one schema."""
    values: dict[str, Any] = {}
    for resource in resources:
        values.update({field: getattr(resource, field) for field in type(resource).model_fields})
    return parse_config(values, source="Dagster resource config")


_MODELS: dict[tuple, LoadedModel] = {}


def loaded_model(path: str, fingerprint: str, model: ModelResource, compute: ComputeResource) -> LoadedModel:
    """Load once per process: the in-process executor runs many assets against one model."""
    key = (path, fingerprint, tuple(model.layers), compute.device, compute.dtype, model.trust_remote_code)
    if key not in _MODELS:
        _MODELS.clear()
        _MODELS[key] = load_model(
            path, layers=model.layers, device=compute.device, dtype=compute.dtype,
            trust_remote_code=model.trust_remote_code,
        )
    return _MODELS[key]
