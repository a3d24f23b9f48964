"""EK-FAC influence: capture, factors, projections, stored gradients, scores, re-ranking.
Imports inputs, demo, model, store and the base modules."""
