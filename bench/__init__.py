"""Benchmarks that print their figures as ratios against a baseline measured in the same run.
Run each as a module from the repository root: python -m bench.influence, python -m bench.validation, ..."""
