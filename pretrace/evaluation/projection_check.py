"""What the stored scores lose: stored (projected, low-rank) against exact EK-FAC scores on a
seeded sample of one shard's documents.

The stored scores come from Kronecker-projected (`projection`), factored (`document_rank`) or
bfloat16-stored (`stored_gradient_dtype`) document gradients and, with `query_rank`, rank-r query
gradients; the exact ones are streamed
from the model with dense, unprojected preconditioned query gradients. Over the sample, per query, their Pearson correlation says how
much of the ranking survives, and how often both put the same document first.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from pretrace.analyses.correlation import pearson
from pretrace.influence.ekfac import Factors
from pretrace.influence.scores import exact_scores
from pretrace.inputs.query_file import Query
from pretrace.model.adapter import LoadedModel

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


def score_accuracy(
    error: ProjectionError | None,
    projection: dict | None,
    query_rank: int | None,
    document_rank: int | None,
    stored_dtype: str = "float32",
) -> dict[str, Any]:
    """What one shard's stored scores are, as JSON: exact, or approximate with the projection,
    the query and document ranks, the stored gradients' precision and the error measured on the
    sample (NaN, a constant sample, as null)."""
    measured = (
        {}
        if error is None
        else {
            key: (value if not isinstance(value, float) or math.isfinite(value) else None)
            for key, value in asdict(error).items()
        }
    )
    return {
        "exact": error is None,
        "projection": projection,
        "query_rank": query_rank,
        "document_rank": document_rank,
        "stored_dtype": stored_dtype,
        **measured,
    }


def projection_error(
    lm: LoadedModel,
    factors: Factors,
    queries: list[Query],
    tokens: list[list[int]],
    stored: np.ndarray,
    *,
    batch_size: int = 8,
    groups: int = 1,
) -> ProjectionError:
    """Compare ``stored`` (Q, m) scores of the sampled documents with exact ones."""
    exact = exact_scores(lm, factors, queries, tokens, batch_size=batch_size, groups=groups).double().numpy()
    stored = np.asarray(stored, np.float64)
    r = np.array([pearson(a, b) for a, b in zip(stored, exact)])
    agree = float(np.mean(stored.argmax(axis=1) == exact.argmax(axis=1)))
    finite = r[np.isfinite(r)]
    return ProjectionError(
        float(finite.mean()) if finite.size else float("nan"),
        float(finite.min()) if finite.size else float("nan"),
        agree,
        stored.shape[1],
        stored.shape[0],
    )


ACCURACY_SCHEMA = pa.schema(
    [
        ("shard", pa.string()),
        ("exact", pa.bool_()),
        ("projection", pa.string()),
        ("query_rank", pa.int64()),
        ("document_rank", pa.int64()),
        ("stored_dtype", pa.string()),
        ("documents", pa.int64()),
        ("queries", pa.int64()),
        ("pearson_mean", pa.float64()),
        ("pearson_min", pa.float64()),
        ("top1_agreement", pa.float64()),
    ]
)


def accuracy_table(shards: Iterable[tuple[str, dict[str, Any]]]) -> pa.Table:
    """One row per shard from each shard's `score_accuracy`, for the report."""
    rows = [
        {
            **{name: record.get(name) for name in ACCURACY_SCHEMA.names},
            "shard": shard,
            "projection": None if record["projection"] is None else _describe(record["projection"]),
        }
        for shard, record in shards
    ]
    return pa.Table.from_pylist(rows, schema=ACCURACY_SCHEMA)


def _describe(projection: dict[str, Any]) -> str:
    """E.g. "[32, 32] whitened, seed 0"; a principal projection's description has no seed
    (`KroneckerProjection.describe`)."""
    seed = f", seed {projection['seed']}" if "seed" in projection else ""
    return f"[{projection['k_out']}, {projection['k_in']}] {projection['basis']}{seed}"
