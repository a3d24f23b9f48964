"""pretrace: EK-FAC influence of pretraining documents on a causal LM's outputs.

Importable without Dagster; the orchestration lives in the sibling packages.
"""

__version__ = "0.1.0"
