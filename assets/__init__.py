"""The Dagster assets: one module per stage, each a thin wrapper over pretrace's science packages.
Imports pretrace.resources and any pretrace package but pretrace.testing; never imported by them."""
