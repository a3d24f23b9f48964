"""Inner products of long flattened matrices, as one batched product over blocks of rows.

Scoring a batch of dense document gradients is (Q, D) x (D, B) with D = d_out x d_in in the
millions and Q, B a handful. Given that shape as one product, cuBLAS runs a small-tile kernel
that reads memory at a fraction of the card's bandwidth (0.88 ms per 1B-class layer on an H200,
`bench/results/gpu-2026-11-27-h200-profile.txt`). Cut the long dimension into blocks of whole
rows instead, and it becomes a batch of (Q, m) x (m, B) products whose partial (Q, B) results are
summed: the same numbers in another order of addition, read as strided views (no copy). A CPU
gains too (0.054 s against 0.112 s for that layer's product on this project's 2-core machine),
and the shorter sums are the more accurate ones.
"""

from __future__ import annotations

import torch

CPU_BLOCK_NUMBERS = 1 << 16
"""About how many numbers of each matrix one block holds on a CPU (whole rows). On a GPU a block is
one row: of the sizes `bench/gpu.py` times on an H200, one row was the fastest (0.28x the single
product's time at a 1B model's width, against 0.73x for blocks of 2^16 numbers)."""


def blocked_inner_products(x: torch.Tensor, y: torch.Tensor, block_numbers: int | None = None) -> torch.Tensor:
    """(Q, B) inner products <x_q, y_b> of x (Q, rows, cols) and y (B, rows, cols), same dtype and
    device, summed over blocks of ``block_numbers // cols`` rows (at least one; by default one row
    on a GPU, `CPU_BLOCK_NUMBERS` on a CPU) and the rows left over."""
    if block_numbers is None:
        block_numbers = 1 if x.is_cuda else CPU_BLOCK_NUMBERS
    Q, rows, cols = x.shape
    B = y.shape[0]
    block_rows = min(rows, max(1, block_numbers // cols))
    blocks = rows // block_rows
    head = blocks * block_rows
    m = block_rows * cols
    xs = x[:, :head].reshape(Q, blocks, m).transpose(0, 1)  # (blocks, Q, m), rows of each block contiguous
    ys = y[:, :head].reshape(B, blocks, m).permute(1, 2, 0)  # (blocks, m, B)
    out = torch.bmm(xs, ys).sum(dim=0)
    if head < rows:
        out += x[:, head:].reshape(Q, -1) @ y[:, head:].reshape(B, -1).T
    return out
