"""Dagster resources: one service over the configuration schema in pretrace.config.
Imports any pretrace science package (never pretrace.testing); imported by pretrace.assets and pretrace.pipeline."""

from .pretrace import PretraceResource

__all__ = ["PretraceResource"]
