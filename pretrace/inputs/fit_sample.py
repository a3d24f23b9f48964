"""The documents EK-FAC factors are fitted on: all of the fit shards', or a seeded sample.

Grosse et al. (2023) and Ruis et al. (2024) fit the factors on a sample of the corpus: the
covariances converge long before the corpus ends. `fit_documents` draws that sample so that it
is deterministic and stable when files are added: each document gets a 64-bit hash of the
project's `seed` and its id (`doc_id`, unique within its file; the shard key makes it unique in
the corpus), and is in the sample iff its hash falls below a threshold.

- A fraction f in (0, 1] sets the threshold at f × 2⁶⁴: a document's membership depends on
  itself alone, so a new file never changes which old documents are sampled.
- A count n sets it just above the n-th smallest hash over every fit shard's documents: the n
  documents of smallest hash. A new file changes the sample only by its documents that beat old
  ones (each pushes out the old document of largest hash), but every fit shard's sample then
  depends on every fit shard's ids, so adding a file recomputes every shard's fitting passes.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Iterable, Sequence

from pretrace.errors import InputError

HASH_RANGE = 1 << 64


def document_hash(seed: int, shard: str, doc_id: str) -> int:
    """A 64-bit hash of (seed, shard, document id), uniform over [0, 2⁶⁴)."""
    digest = hashlib.blake2b(f"{seed}\0{shard}\0{doc_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def fraction_threshold(fraction: float) -> int:
    """The threshold that keeps each document with probability ``fraction``."""
    return round(fraction * HASH_RANGE)


def count_threshold(count: int, hashes: Iterable[int], what: str = "the fit shards") -> int:
    """The threshold that keeps the ``count`` documents of smallest hash among ``hashes``."""
    hashes = list(hashes)
    if count > len(hashes):
        raise InputError(
            f"fit_documents: {count} exceeds the {len(hashes)} documents of {what}; "
            "lower it, or give a fraction such as 0.1"
        )
    return heapq.nsmallest(count, hashes)[-1] + 1


def sample_threshold(fit_documents: int | float | None, seed: int, ids: Iterable[tuple[str, Sequence[str]]]) -> int:
    """The threshold of `fit_documents` (everything when unset); ``ids`` gives (shard, document
    ids) of every fit shard and is read only for a count."""
    if fit_documents is None:
        return HASH_RANGE
    if isinstance(fit_documents, float):
        return fraction_threshold(fit_documents)
    return count_threshold(fit_documents, (document_hash(seed, shard, d) for shard, docs in ids for d in docs))


def in_sample(seed: int, shard: str, doc_ids: Sequence[str], threshold: int) -> list[bool]:
    """Which of a shard's documents are in the sample of this threshold."""
    return [document_hash(seed, shard, d) < threshold for d in doc_ids]


def sampled_documents(fit_documents: int | float | None, documents: int) -> int:
    """How many of ``documents`` a fit on `fit_documents` uses (in expectation for a fraction):
    what a plan's estimate of fitting time counts."""
    if fit_documents is None:
        return documents
    if isinstance(fit_documents, float):
        return round(fit_documents * documents)
    return min(fit_documents, documents)
