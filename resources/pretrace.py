"""The one Dagster resource: the project's settings (pretrace.yaml), validated once, and the
services assets need from them.

Its fields are the pretrace.yaml keys, with the same defaults and descriptions, so the
launchpad reads like the file. Two YAML forms that Dagster's config types cannot express are
split: ``damping: {absolute: x}`` is ``damping_absolute``, and an unset ``fit_shards`` means all.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import dagster as dg
from pydantic import Field

from pretrace.config import PretraceConfig, parse_config
from pretrace.project.provenance import Project

_DEFAULTS = PretraceConfig()


_SAME = object()


def _field(key: str, default=_SAME):
    """A field with pretrace.yaml's default (unless given) and the schema's description."""
    description = PretraceConfig.model_fields[key].description
    return Field(default=getattr(_DEFAULTS, key) if default is _SAME else default, description=description)


class PretraceResource(dg.ConfigurableResource):
    """pretrace's settings; `.config` is the validated PretraceConfig every asset works from."""

    model: str = _field("model")
    corpus: str = _field("corpus")
    queries: str = _field("queries")
    storage: str = _field("storage")
    layers: list[str] = _field("layers")
    fisher: str = _field("fisher")
    damping: float = _field("damping", 0.1)
    damping_absolute: float | None = Field(
        default=None, description="When set, λ = this value for every layer instead of the relative `damping`."
    )
    projection: list[int] | None = _field("projection", None)
    projection_basis: str = _field("projection_basis")
    query_rank: int | None = _field("query_rank")
    document_rank: int | None = _field("document_rank")
    stored_gradient_dtype: str = _field("stored_gradient_dtype")
    max_length: int = _field("max_length")
    batch_size: int = _field("batch_size")
    fit_shards: list[str] | None = _field("fit_shards", None)
    fit_documents: float | None = _field("fit_documents")  # a whole number > 1 is a count (the schema's rule)
    exclude_files: list[str] = _field("exclude_files")
    device: str = _field("device")
    dtype: str = _field("dtype")
    layer_groups: int | None = _field("layer_groups")
    factor_block_size: int | None = _field("factor_block_size")
    activation_checkpointing: bool = _field("activation_checkpointing")
    gpus_per_step: int = _field("gpus_per_step")
    device_memory_gb: float | None = _field("device_memory_gb")
    trust_remote_code: bool = _field("trust_remote_code")
    allow_pickle: bool = _field("allow_pickle")
    seed: int = _field("seed")
    top_k: int = _field("top_k")
    report_top_fraction: float | None = _field("report_top_fraction")
    rerank_k: int | None = _field("rerank_k")
    tail_patch_k: int = _field("tail_patch_k")
    tail_patch_lr: float = _field("tail_patch_lr")
    projection_floor: float = _field("projection_floor")
    completion_tokens: int = _field("completion_tokens")
    completion_instruction: str | None = _field("completion_instruction")
    completion_stop: list[str] = _field("completion_stop")
    demo_steps: int = _field("demo_steps")
    demo_retrain: bool = _field("demo_retrain")
    compare_models: dict[str, dict[str, Any]] = _field("compare_models")
    demo: bool = Field(
        default=False, description="Train the demo's tiny model on the corpus instead of loading `model`."
    )

    @classmethod
    def from_config(cls, config: PretraceConfig, demo: bool = False) -> PretraceResource:
        values = config.model_dump(mode="json")
        damping = values.pop("damping")
        absolute = damping.get("absolute") if isinstance(damping, dict) else None
        return cls(
            **{
                **values,
                "damping": 0.1 if absolute is not None else damping,
                "damping_absolute": absolute,
                "projection": None if config.projection is None else list(config.projection),
                "fit_shards": None if config.fit_shards == "all" else list(config.fit_shards),
                "demo": demo,
            }
        )

    @property
    def config(self) -> PretraceConfig:
        """The settings validated against the one schema (once per distinct set of values)."""
        values = {k: getattr(self, k) for k in PretraceConfig.model_fields}
        values["damping"] = {"absolute": self.damping_absolute} if self.damping_absolute is not None else self.damping
        values["projection"] = self.projection or "none"
        values["fit_shards"] = self.fit_shards or "all"
        return _validated(json.dumps(values, sort_keys=True))

    def project(self) -> Project:
        """A fresh view of the storage root and inputs, for one decision or one computation."""
        return Project(self.config, demo=self.demo)


@lru_cache(maxsize=8)
def _validated(values: str) -> PretraceConfig:
    return parse_config(json.loads(values), source="Dagster resource `pretrace`")
