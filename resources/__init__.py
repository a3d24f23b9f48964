"""Dagster resources: thin, typed views of the one configuration schema in pretrace.config."""

from .settings import (
    ComputeResource,
    InfluenceResource,
    ModelResource,
    StorageResource,
    config_from_resources,
    resources_from_config,
)

__all__ = [
    "ComputeResource",
    "InfluenceResource",
    "ModelResource",
    "StorageResource",
    "config_from_resources",
    "resources_from_config",
]
