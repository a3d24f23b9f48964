"""Tiny models, peers and synthetic data that tests and benches share (never used by the pipeline).
May import any pretrace package."""
