"""Padded batches of token sequences, with a mask saying which tokens are prediction targets."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch


@dataclass
class TokenBatch:
    """Right-padded token ids.

    `target_mask[b, t]` is True when token t of sequence b is predicted (from tokens < t) and
    counts in the loss: every real token but the first for documents, only the completion's
    tokens for queries. Padding is never a target.
    """

    input_ids: torch.Tensor  # (B, T) long
    attention_mask: torch.Tensor  # (B, T) long
    target_mask: torch.Tensor  # (B, T) bool

    def to(self, device: torch.device) -> TokenBatch:
        return TokenBatch(self.input_ids.to(device), self.attention_mask.to(device), self.target_mask.to(device))

    @property
    def size(self) -> int:
        return self.input_ids.shape[0]

    @property
    def n_tokens(self) -> int:
        return int(self.attention_mask.sum())


def collate(sequences: Sequence[Sequence[int]], pad_id: int, first_target: Sequence[int] | None = None) -> TokenBatch:
    """Pad sequences on the right; targets start at `first_target[i]` (default 1) of each."""
    if not sequences:
        raise ValueError("collate needs at least one sequence")
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    attention = torch.zeros((len(sequences), length), dtype=torch.long)
    targets = torch.zeros((len(sequences), length), dtype=torch.bool)
    for row, seq in enumerate(sequences):
        n = len(seq)
        ids[row, :n] = torch.as_tensor(seq, dtype=torch.long)
        attention[row, :n] = 1
        start = 1 if first_target is None else max(1, first_target[row])
        targets[row, start:n] = True
    return TokenBatch(ids, attention, targets)


def batches(
    sequences: Sequence[Sequence[int]],
    batch_size: int,
    pad_id: int,
    first_target: Sequence[int] | None = None,
) -> Iterator[tuple[range, TokenBatch]]:
    """Consecutive batches of at most `batch_size` sequences.

    Yields the index range each batch covers, so callers can line results up with inputs.
    """
    start = 0
    while start < len(sequences):
        stop = min(start + batch_size, len(sequences))
        index = range(start, stop)
        chunk = [sequences[i] for i in index]
        first = None if first_target is None else [first_target[i] for i in index]
        yield index, collate(chunk, pad_id, first)
        start = stop
