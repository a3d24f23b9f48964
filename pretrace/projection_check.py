"""What the stored scores lose: stored (projected, low-rank) against exact EK-FAC scores on a
seeded sample of one shard's documents.

The stored scores come from Kronecker-projected document gradients and (with `query_rank`)
rank-r query gradients; the exact ones are streamed from the model with dense, unprojected
preconditioned query gradients. Over the sample, per query, their Pearson correlation says how
much of the ranking survives, and how often both put the same document first.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from .ekfac import Factors
from .model import LoadedModel
from .queries import Query, compute_query_gradients
from .scores import stream_scores

SAMPLE = 16


def sample_documents(n: int, seed: int, shard: str, size: int = SAMPLE) -> list[int]:
    """The same sorted sample of a shard's document indices for a seed, whatever the machine."""
    salt = int.from_bytes(hashlib.sha256(f"{seed}:{shard}".encode()).digest()[:8], "little")
    return sorted(np.random.default_rng(salt).choice(n, size=min(size, n), replace=False).tolist())


@dataclass
class ProjectionError:
    pearson_mean: float  # mean over queries of Pearson(stored, exact) across the sampled documents
    pearson_min: float
    top1_agreement: float  # share of queries whose highest-scored sampled document is the same
    documents: int
    queries: int


def projection_error(lm: LoadedModel, factors: Factors, queries: list[Query], tokens: list[list[int]],
                     stored: np.ndarray, *, batch_size: int = 8) -> ProjectionError:
    """Compare ``stored`` (Q, m) scores of the sampled documents with exact ones."""
    exact_queries = compute_query_gradients(lm, factors, queries, batch_size=batch_size)
    exact = stream_scores(lm, exact_queries, tokens, batch_size=batch_size).double().numpy()
    stored = np.asarray(stored, np.float64)
    r = np.array([_pearson(a, b) for a, b in zip(stored, exact)])
    agree = float(np.mean(stored.argmax(axis=1) == exact.argmax(axis=1)))
    finite = r[np.isfinite(r)]
    return ProjectionError(float(finite.mean()) if finite.size else float("nan"),
                           float(finite.min()) if finite.size else float("nan"), agree, stored.shape[1],
                           stored.shape[0])


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denominator) if denominator > 0 else float("nan")
