"""Tiny models, peers, synthetic data and a tiny project on disk that tests and benches share (never
used by the product). The top layer: may import any pretrace package, the Dagster layer included."""
