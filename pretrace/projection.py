"""Seeded Kronecker projections that shrink a (d_out, d_in) gradient to (k_out, k_in).

P_out X P_in^T with Gaussian P of variance 1/k preserves inner products in expectation
(E[P^T P] = I). Because sum_t g_t a_t^T projects to sum_t (P_out g_t)(P_in a_t)^T, document
gradients are projected token by token and the full gradient is never formed.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch

from .config import PretraceConfig
from .errors import InputError


def _matrix(k: int, d: int, seed: int, salt: str) -> torch.Tensor | None:
    """A (k, d) Gaussian projection, or None (identity) when k does not shrink d."""
    if k >= d:
        return None
    generator = torch.Generator().manual_seed((seed * 2_654_435_761 + zlib.crc32(salt.encode())) % (2**63))
    return torch.randn(k, d, generator=generator, dtype=torch.float32) / k**0.5


@dataclass
class KroneckerProjection:
    """Per-layer projection pairs, reproducible from (k_out, k_in, seed) alone."""

    k_out: int
    k_in: int
    seed: int
    P_out: dict[str, torch.Tensor | None]
    P_in: dict[str, torch.Tensor | None]

    @classmethod
    def build(cls, shapes: dict[str, tuple[int, int]], k_out: int, k_in: int, seed: int = 0) -> "KroneckerProjection":
        if k_out < 1 or k_in < 1:
            raise InputError(f"projection: sizes must be positive integers, got [{k_out}, {k_in}]")
        P_out = {name: _matrix(k_out, d_out, seed, f"{name}:out") for name, (d_out, _) in shapes.items()}
        P_in = {name: _matrix(k_in, d_in, seed, f"{name}:in") for name, (_, d_in) in shapes.items()}
        return cls(k_out, k_in, seed, P_out, P_in)

    def to(self, device: torch.device, dtype: torch.dtype = torch.float32) -> "KroneckerProjection":
        move = lambda d: {k: None if v is None else v.to(device, dtype) for k, v in d.items()}  # noqa: E731
        return KroneckerProjection(self.k_out, self.k_in, self.seed, move(self.P_out), move(self.P_in))

    def project_tokens(self, name: str, a: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Project per-token inputs (.., d_in) and output gradients (.., d_out)."""
        P_in, P_out = self.P_in[name], self.P_out[name]
        return (a if P_in is None else a @ P_in.T), (g if P_out is None else g @ P_out.T)

    def project_matrix(self, name: str, X: torch.Tensor) -> torch.Tensor:
        """P_out X P_in^T for X of shape (..., d_out, d_in)."""
        P_in, P_out = self.P_in[name], self.P_out[name]
        if P_out is not None:
            X = P_out @ X
        if P_in is not None:
            X = X @ P_in.T
        return X

    def describe(self) -> dict:
        return {"k_out": self.k_out, "k_in": self.k_in, "seed": self.seed}


def projection_for(config: PretraceConfig, shapes: dict[str, tuple[int, int]]) -> KroneckerProjection | None:
    """The projection a configuration asks for (`projection: [k_out, k_in]`), or None (exact)."""
    if config.projection is None:
        return None
    k_out, k_in = config.projection
    return KroneckerProjection.build(shapes, k_out, k_in, seed=config.seed)
