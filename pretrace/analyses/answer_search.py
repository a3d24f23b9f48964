"""Which of each query's top documents state its answer and the result of each step, mergeable.

Ruis et al. search every query's top 500 documents for the answer and, for reasoning queries,
for the result of each step, found in one document or across several. Per shard this keeps,
for each query, its ``depth`` highest-scored documents as three arrays: score (descending), a
64-bit key of the document id (the tie-break, so the merge is the same in any shard order) and
one flag per target ([answer, *intermediate results], ``pretrace.analyses.answers`` matching rules).
Merging two searches keeps the ``depth`` best of both: the corpus-wide top list, exactly.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from pretrace.analyses.answers import find_answer

DEPTH = 500


def document_key(doc_id: str) -> int:
    """A stable signed 64-bit key of a document id (Python's hash() changes between runs)."""
    return int.from_bytes(hashlib.blake2b(doc_id.encode(), digest_size=8).digest(), "little", signed=True)


@dataclass
class AnswerSearch:
    """Per query, its top documents' scores, keys and target flags, best first."""

    scores: np.ndarray  # (Q, D) float32, descending; D = min(depth, documents)
    keys: np.ndarray  # (Q, D) int64
    found: np.ndarray  # (Q, D, T) bool: target t of the query is in the document (T = most targets)

    @classmethod
    def of(
        cls,
        s32: np.ndarray,
        doc_ids: list[str] | None,
        texts: list[str] | None,
        targets: list[list[str]],
        depth: int = DEPTH,
    ) -> AnswerSearch:
        """The search of one (Q, N) score block; without texts nothing is found."""
        q, n = s32.shape
        d, width = min(depth, n), max((len(t) for t in targets), default=0)
        keys_all = (
            np.array([document_key(x) for x in doc_ids], np.int64)
            if doc_ids is not None
            else np.arange(n, dtype=np.int64)
        )
        scores, keys = np.zeros((q, d), np.float32), np.zeros((q, d), np.int64)
        found = np.zeros((q, d, width), bool)
        for row in range(q):
            picked = _best(s32[row], keys_all, d)
            scores[row], keys[row] = s32[row, picked], keys_all[picked]
            if texts is not None:
                for j, i in enumerate(picked):
                    found[row, j, : len(targets[row])] = [
                        bool(t) and find_answer(texts[i], t) is not None for t in targets[row]
                    ]
        return cls(scores, keys, found)

    def merge(self, other: AnswerSearch, depth: int) -> AnswerSearch:
        scores = np.concatenate([self.scores, other.scores], axis=1)
        keys = np.concatenate([self.keys, other.keys], axis=1)
        found = np.concatenate([self.found, other.found], axis=1)
        d = min(depth, scores.shape[1])
        order = (
            np.stack([np.lexsort((k, -s))[:d] for s, k in zip(scores, keys)])
            if scores.shape[0]
            else np.zeros((0, d), np.int64)
        )
        rows = np.arange(scores.shape[0])[:, None]
        return AnswerSearch(scores[rows, order], keys[rows, order], found[rows, order])

    def select(self, index: list[int]) -> AnswerSearch:
        return AnswerSearch(self.scores[index], self.keys[index], self.found[index])

    def tensors(self) -> dict[str, np.ndarray]:
        return {"search.scores": self.scores, "search.keys": self.keys, "search.found": self.found.astype(np.uint8)}

    @classmethod
    def from_arrays(cls, t: dict[str, np.ndarray]) -> AnswerSearch:
        return cls(t["search.scores"], t["search.keys"], t["search.found"].astype(bool))


def _best(values: np.ndarray, keys: np.ndarray, d: int) -> np.ndarray:
    """Indices of the d highest values, ties broken by key, best first."""
    if d == 0:
        return np.zeros(0, np.int64)
    n = values.size
    threshold = np.partition(values, n - d)[n - d]
    candidates = np.nonzero(values >= threshold)[0]
    return candidates[np.lexsort((keys[candidates], -values[candidates]))[:d]]
