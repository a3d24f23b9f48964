"""Ground truth for attributions: tail-patch, the attribution check, the projection check.
Imports analyses and every layer below it."""
