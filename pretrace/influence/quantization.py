"""Stored document gradients in 8 or 4 bits per number (`stored_gradient_dtype: int8 | int4`).

Each row of a document's (k_out, k_in) gradient keeps one float32 scale, its largest magnitude,
and every number the nearest of the 2^(bits-1) - 1 levels on either side of zero: symmetric
scalar quantization, as vector-search indexes store embeddings. Scores need far fewer bits per
number than float32 carries, so the same bytes hold a larger projection: on the demo's trained
model a 128 x 128 principal store in 4 bits keeps the float32 store's Pearson with exact scores
to within 0.001, in 1/8 of its bytes (bench/projection.py). Rank-c factors (`document_rank`)
quantize alike, with one scale per rank shared by its two columns. In memory the codes are
int8; on disk 4-bit codes go two to a byte.
"""

from __future__ import annotations

import torch

from pretrace.config import QUANTIZED_DTYPES
from pretrace.model.adapter import resolve_dtype

BITS = {dtype: int(dtype.removeprefix("int")) for dtype in QUANTIZED_DTYPES}
"""The quantized `stored_gradient_dtype`s and their bits per number."""
SCALE_BYTES = 4


def quantize(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, scales) of (..., k_in) rows: int8 codes in [-m, m], m = 2^(bits-1) - 1, and
    float32 scales (...,) with x ≈ codes * scale; an all-zero row gets scale 0."""
    levels = 2 ** (bits - 1) - 1
    x = x.float()
    scales = x.abs().amax(dim=-1, keepdim=True) / levels
    codes = x / scales.clamp_min(torch.finfo(torch.float32).tiny)  # an all-zero row stays zero
    return codes.round().clamp(-levels, levels).to(torch.int8), scales.squeeze(-1)


def dequantize(codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """The float32 rows that ``codes`` and ``scales`` stand for."""
    return codes.float() * scales.unsqueeze(-1)


def quantize_factors(L: torch.Tensor, R: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(L codes, R codes, scales (..., r)) of factors L (..., k_out, r) and R (..., k_in, r).

    L R^T does not change when column j of L is multiplied by s and column j of R divided by
    it, so each pair is first balanced to the same largest magnitude; one scale per rank then
    quantizes both columns as finely as a scale of their own would. A rank whose product is zero
    (either column all zeros) gets scale 0 and zero codes.
    """
    levels = 2 ** (bits - 1) - 1
    L, R = L.float(), R.float()
    left, right = L.abs().amax(dim=-2), R.abs().amax(dim=-2)
    nonzero = (left > 0) & (right > 0)
    balance = torch.where(nonzero, (right / left.where(nonzero, torch.ones_like(left))).sqrt(), torch.ones_like(left))
    scales = torch.where(nonzero, (left * right).sqrt() / levels, torch.zeros_like(left))
    step = scales.clamp_min(torch.finfo(torch.float32).tiny).unsqueeze(-2)
    kept = nonzero.unsqueeze(-2)

    def codes(x):
        return (x.where(kept, 0.0) / step).round().clamp(-levels, levels).to(torch.int8)

    return codes(L * balance.unsqueeze(-2)), codes(R / balance.unsqueeze(-2)), scales


def dequantize_factor(codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """The float32 factor (..., k, r) that `quantize_factors`' ``codes`` and ``scales`` stand for."""
    return codes.float() * scales.unsqueeze(-2)


def factor_bytes(stored_gradient_dtype: str, rank: int, k_out: int, k_in: int) -> int:
    """Bytes on disk of one document's rank-``rank`` factors of a (k_out, k_in) gradient (at most
    rank min(k_out, k_in), as `pretrace.influence.low_rank.factorize` keeps), a quantized store's per-rank
    scales included."""
    rank = min(rank, k_out, k_in)
    if stored_gradient_dtype not in BITS:
        return rank * (k_out + k_in) * resolve_dtype(stored_gradient_dtype).itemsize
    return (k_out + k_in) * packed_columns(rank, BITS[stored_gradient_dtype]) + rank * SCALE_BYTES


def row_bytes(stored_gradient_dtype: str, columns: int) -> int:
    """Bytes on disk of one stored row of ``columns`` numbers, a quantized row's scale included."""
    if stored_gradient_dtype not in BITS:
        return columns * resolve_dtype(stored_gradient_dtype).itemsize
    return packed_columns(columns, BITS[stored_gradient_dtype]) + SCALE_BYTES


def packed_columns(columns: int, bits: int) -> int:
    """Bytes of one row of codes on disk."""
    return columns if bits == 8 else (columns + 1) // 2


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes as stored: int8 as they are; 4-bit ones two to a byte (uint8, even column in the
    low half), a last odd column padded with a zero code."""
    if bits == 8:
        return codes
    if codes.shape[-1] % 2:
        codes = torch.nn.functional.pad(codes, (0, 1))
    offset = (codes + 8).to(torch.uint8)  # -7..7 -> 1..15
    return offset[..., 0::2] | (offset[..., 1::2] << 4)


def unpack(stored: torch.Tensor, bits: int, columns: int) -> torch.Tensor:
    """The int8 codes of `pack`'s output, ``columns`` per row."""
    if bits == 8:
        return stored
    low = (stored & 0x0F).to(torch.int8) - 8
    high = (stored >> 4).to(torch.int8) - 8
    return torch.stack([low, high], dim=-1).flatten(-2)[..., :columns]
