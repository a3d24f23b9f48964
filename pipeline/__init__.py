"""The Dagster code location: Definitions, partitions, jobs, schedules, sensors and the CLI."""
