"""The Dagster code location: Definitions, partitions, jobs, schedules, sensors and the CLI.
The top layer: imports pretrace.assets, pretrace.resources and the science packages (never pretrace.testing)."""
