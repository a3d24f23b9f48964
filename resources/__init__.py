"""Dagster resources: one service over the configuration schema in pretrace.config."""

from .pretrace import PretraceResource

__all__ = ["PretraceResource"]
