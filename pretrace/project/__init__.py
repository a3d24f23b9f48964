"""A project: its artefact registry, manifests, recompute policy, computations and preflight.
Imports planning and every layer below it."""
