"""EK-FAC: Kronecker-factored eigenbases with eigenvalues corrected on per-example gradients.

Fitting is split into passes whose partial results are sums, so a corpus can be fitted shard
by shard and merged: `CovarianceState` (A = sum a a^T, S = sum g g^T) -> `Eigenbasis`
(eigenvectors in float64) -> `LambdaState` (sum over examples of (Q_S^T dW Q_A)^2) ->
`Factors` (the damped preconditioner).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from pretrace.config import Damping
from pretrace.errors import InputError
from pretrace.influence.capture import Captured, Labels, capture, check_finite, float32_matmul
from pretrace.influence.layer_groups import by_layer_group, join_layers, join_mappings
from pretrace.inputs.batching import TokenBatch
from pretrace.model.adapter import LoadedModel
from pretrace.store.serialization import pack, unpack

Progress = Callable[[int], None]
FISHER_LABELS: dict[str, Labels] = {"sampled": "sampled", "empirical": "data"}


def batch_generator(batch: TokenBatch, seed: int, device: torch.device) -> torch.Generator:
    """A generator seeded by the batch's content, so sampled labels do not depend on which
    shard or run a batch lands in: split fits then merge to exactly the whole fit."""
    digest = zlib.crc32(batch.input_ids.cpu().numpy().astype(np.int64).tobytes())
    generator = torch.Generator(device=device)
    generator.manual_seed((seed * 1_000_003 + digest) % (2**63))
    return generator


def _labels(fisher: str) -> Labels:
    try:
        return FISHER_LABELS[fisher]
    except KeyError:
        raise InputError(f"fisher: {fisher!r} is not one of sampled, empirical") from None


def _fitting_passes(
    lm: LoadedModel, batches: Iterable[TokenBatch], fisher: str, seed: int, progress: Progress | None
) -> Iterable[tuple[TokenBatch, Captured]]:
    labels = _labels(fisher)
    for batch in batches:
        generator = batch_generator(batch, seed, lm.device) if labels == "sampled" else None
        yield batch, capture(lm, batch, labels, generator)
        if progress is not None:
            progress(batch.size)


def _same_data(groups: Sequence, counts: Callable) -> object:
    """The counts every group saw; groups fitted on different data cannot be joined."""
    seen = {counts(g) for g in groups}
    if len(seen) != 1:
        raise InputError(f"layer groups were fitted on different data (counts {sorted(seen)}); refit them together")
    return seen.pop()


@dataclass
class CovarianceState:
    """Sums of activation (A) and pre-activation-gradient (S) outer products over tokens."""

    A: dict[str, torch.Tensor]  # float64 (d_in, d_in)
    S: dict[str, torch.Tensor]  # float64 (d_out, d_out)
    n_tokens: int
    n_examples: int

    def merge(self, other: CovarianceState) -> CovarianceState:
        if self.A.keys() != other.A.keys():
            raise InputError("cannot merge covariances of different tracked layers")
        return CovarianceState(
            {k: self.A[k] + other.A[k] for k in self.A},
            {k: self.S[k] + other.S[k] for k in self.S},
            self.n_tokens + other.n_tokens,
            self.n_examples + other.n_examples,
        )

    @classmethod
    def join(cls, groups: Sequence[CovarianceState]) -> CovarianceState:
        """One state from the states of disjoint layer groups fitted on the same documents."""
        n_tokens, n_examples = _same_data(groups, lambda g: (g.n_tokens, g.n_examples))
        return cls(join_layers([g.A for g in groups]), join_layers([g.S for g in groups]), n_tokens, n_examples)

    def to_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        tensors = {f"{k}::A": v for k, v in self.A.items()} | {f"{k}::S": v for k, v in self.S.items()}
        return pack(tensors, "covariances", layers=list(self.A), n_tokens=self.n_tokens, n_examples=self.n_examples)

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> CovarianceState:
        meta = unpack(metadata, "covariances")
        layers = meta["layers"]
        return cls(
            {k: tensors[f"{k}::A"] for k in layers},
            {k: tensors[f"{k}::S"] for k in layers},
            meta["n_tokens"],
            meta["n_examples"],
        )


def diagonal_blocks(size: int, block_size: int | None) -> list[slice]:
    """One side of a layer's Kronecker factors as contiguous diagonal blocks: the whole side, or
    with ``block_size`` the fewest blocks of at most that size, of about equal sizes."""
    if block_size is None or size <= block_size:
        return [slice(0, size)]
    count = -(-size // block_size)
    bounds = [size * i // count for i in range(count + 1)]
    return [slice(start, stop) for start, stop in zip(bounds, bounds[1:])]


def _accumulate(total: torch.Tensor, x: torch.Tensor, block_size: int | None, what: str, name: str) -> None:
    """Add x^T x (float32 products) into the float64 ``total``: all of it, or only its diagonal
    blocks (Grosse et al.'s within-layer block-diagonal approximation), the rest left zero."""
    for block in diagonal_blocks(x.shape[1], block_size):
        part = float32_matmul(x[:, block].T, x[:, block])
        check_finite(part, what, name)
        total[block, block] += part


def fit_covariances(
    lm: LoadedModel,
    batches: Iterable[TokenBatch],
    fisher: str = "sampled",
    seed: int = 0,
    progress: Progress | None = None,
    block_size: int | None = None,
) -> CovarianceState:
    """First EK-FAC pass: A and S summed in float64 over every real token, on the model's device
    (a batch's float32 products are added into float64 sums there, so nothing crosses to the
    host per batch); the sums come back to the host. With ``block_size``, a side wider than it
    keeps only its diagonal blocks (`diagonal_blocks`): a layer too wide to eigendecompose whole
    is decomposed a block at a time."""
    A = {layer.name: _zeros(layer.d_in, layer.d_in, lm.device) for layer in lm.layers}
    S = {layer.name: _zeros(layer.d_out, layer.d_out, lm.device) for layer in lm.layers}
    n_tokens = n_examples = 0
    for batch, cap in _fitting_passes(lm, batches, fisher, seed, progress):
        for name in A:
            _accumulate(A[name], cap.a[name].flatten(0, 1), block_size, "activation covariance", name)
            _accumulate(S[name], cap.g[name].flatten(0, 1), block_size, "gradient covariance", name)
        n_tokens += batch.n_tokens
        n_examples += batch.size
    return CovarianceState(_to_host(A), _to_host(S), n_tokens, n_examples)


def _zeros(rows: int, columns: int, device: torch.device) -> torch.Tensor:
    return torch.zeros(rows, columns, dtype=torch.float64, device=device)


def _to_host(sums: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: value.cpu() for name, value in sums.items()}


@dataclass
class Eigenbasis:
    """Eigenvectors of A and S per layer (decomposed in float64, kept in float32)."""

    QA: dict[str, torch.Tensor]
    QS: dict[str, torch.Tensor]
    eigvals_A: dict[str, torch.Tensor]
    eigvals_S: dict[str, torch.Tensor]

    def to_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        tensors = {}
        for k in self.QA:
            tensors |= {f"{k}::QA": self.QA[k], f"{k}::QS": self.QS[k]}
            tensors |= {f"{k}::eigvals_A": self.eigvals_A[k], f"{k}::eigvals_S": self.eigvals_S[k]}
        return pack(tensors, "eigenbasis", layers=list(self.QA))

    @classmethod
    def join(cls, groups: Sequence[Eigenbasis]) -> Eigenbasis:
        """The eigenbasis of every layer from those of disjoint layer groups."""
        return join_mappings(cls, groups)

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Eigenbasis:
        layers = unpack(metadata, "eigenbasis")["layers"]
        return cls(*({k: tensors[f"{k}::{part}"] for k in layers} for part in ("QA", "QS", "eigvals_A", "eigvals_S")))


def eigenbasis(cov: CovarianceState, device: torch.device | str = "cpu", block_size: int | None = None) -> Eigenbasis:
    """Eigendecompose the token-averaged covariances in float64 on ``device``, one matrix (with
    ``block_size``: one diagonal block, `fit_covariances`) at a time (a GPU's float64
    eigensolver is far faster than the host's for d in the thousands). A block-diagonal side
    has a block-diagonal eigenbasis, stored whole so every use of the factors is unchanged."""
    if cov.n_tokens == 0:
        raise InputError("no tokens were seen while fitting covariances: the fitting data is empty")
    QA, QS, eA, eS = {}, {}, {}, {}
    for name in cov.A:
        for source, Q, e in ((cov.A[name], QA, eA), (cov.S[name], QS, eS)):
            size = source.shape[0]
            Q[name], e[name] = torch.zeros(size, size), torch.zeros(size)
            for block in diagonal_blocks(size, block_size):
                matrix = source[block, block].to(device, torch.float64) / cov.n_tokens
                check_finite(matrix, "covariance", name)
                values, vectors = torch.linalg.eigh(0.5 * (matrix + matrix.T))
                Q[name][block, block], e[name][block] = vectors.float().cpu(), values.float().cpu()
    return Eigenbasis(QA, QS, eA, eS)


@dataclass
class LambdaState:
    """Sums over examples of squared per-example gradients in the Kronecker eigenbasis."""

    sums: dict[str, torch.Tensor]  # float64 (d_out, d_in)
    n_examples: int

    @classmethod
    def join(cls, groups: Sequence[LambdaState]) -> LambdaState:
        """One state from the states of disjoint layer groups fitted on the same documents."""
        return cls(join_layers([g.sums for g in groups]), _same_data(groups, lambda g: g.n_examples))

    def merge(self, other: LambdaState) -> LambdaState:
        if self.sums.keys() != other.sums.keys():
            raise InputError("cannot merge eigenvalue corrections of different tracked layers")
        return LambdaState({k: self.sums[k] + other.sums[k] for k in self.sums}, self.n_examples + other.n_examples)

    def to_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        return pack(self.sums, "lambdas", layers=list(self.sums), n_examples=self.n_examples)

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> LambdaState:
        meta = unpack(metadata, "lambdas")
        return cls({k: tensors[k] for k in meta["layers"]}, meta["n_examples"])


def rotated_gradients(a: torch.Tensor, g: torch.Tensor, QA: torch.Tensor, QS: torch.Tensor) -> torch.Tensor:
    """Per-example Q_S^T (sum_t g_t a_t^T) Q_A, rotating whichever side is cheaper (in the
    eigenbases' dtype: captured half-precision values are upcast first). Q_S and Q_A may be
    some of the eigenvectors only (k_out, k_in columns): the result is then that block."""
    a, g = a.to(QA.dtype), g.to(QS.dtype)
    tokens, d_in, d_out = a.shape[1], a.shape[2], g.shape[2]
    k_in, k_out = QA.shape[1], QS.shape[1]
    per_token = tokens * (d_in * k_in + d_out * k_out + k_out * k_in)
    if per_token < tokens * d_out * d_in + k_out * d_in * (d_out + k_in):
        return torch.bmm((g @ QS).transpose(1, 2), a @ QA)
    return QS.T @ torch.bmm(g.transpose(1, 2), a) @ QA


def fit_lambdas(
    lm: LoadedModel,
    basis: Eigenbasis,
    batches: Iterable[TokenBatch],
    fisher: str = "sampled",
    seed: int = 0,
    progress: Progress | None = None,
) -> LambdaState:
    """Second EK-FAC pass: the eigenvalue correction, summed in float64 over examples."""
    sums = {layer.name: _zeros(layer.d_out, layer.d_in, lm.device) for layer in lm.layers}
    QA = {k: basis.QA[k].to(lm.device, lm.accumulate_dtype) for k in sums}
    QS = {k: basis.QS[k].to(lm.device, lm.accumulate_dtype) for k in sums}
    n_examples = 0
    for batch, cap in _fitting_passes(lm, batches, fisher, seed, progress):
        for name in sums:
            rotated = rotated_gradients(cap.a[name], cap.g[name], QA[name], QS[name])
            squared = rotated.square().sum(dim=0)
            check_finite(squared, "eigenvalue correction", name)
            sums[name] += squared
        n_examples += batch.size
    return LambdaState(_to_host(sums), n_examples)


@dataclass
class Factors:
    """The EK-FAC preconditioner: H^-1 V = Q_S [(Q_S^T V Q_A) / (Lambda + lambda)] Q_A^T."""

    QA: dict[str, torch.Tensor]
    QS: dict[str, torch.Tensor]
    lambdas: dict[str, torch.Tensor]  # float32 (d_out, d_in), mean over examples
    damping: dict[str, float]

    @property
    def layers(self) -> list[str]:
        return list(self.QA)

    @classmethod
    def join(cls, groups: Sequence[Factors]) -> Factors:
        """The factors of every layer from those of disjoint layer groups."""
        return join_mappings(cls, groups)

    def restricted(self, names: Sequence[str]) -> Factors:
        """The factors of ``names`` alone (a layer group), so only those visit the device."""

        def pick(d):
            return {k: d[k] for k in names}

        return Factors(pick(self.QA), pick(self.QS), pick(self.lambdas), pick(self.damping))

    def to(self, device: torch.device, dtype: torch.dtype = torch.float32) -> Factors:
        def move(d):
            return {k: v.to(device, dtype) for k, v in d.items()}

        return Factors(move(self.QA), move(self.QS), move(self.lambdas), dict(self.damping))

    def precondition_in_eigenbasis(self, name: str, V: torch.Tensor) -> torch.Tensor:
        """(Q_S^T V Q_A) / (Lambda + lambda) for V of shape (..., d_out, d_in)."""
        return (self.QS[name].T @ V @ self.QA[name]) / (self.lambdas[name] + self.damping[name])

    def inverse_hvp(self, name: str, V: torch.Tensor) -> torch.Tensor:
        return self.QS[name] @ self.precondition_in_eigenbasis(name, V) @ self.QA[name].T

    def to_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        tensors = {}
        for k in self.QA:
            tensors |= {f"{k}::QA": self.QA[k], f"{k}::QS": self.QS[k], f"{k}::lambdas": self.lambdas[k]}
        return pack(tensors, "factors", layers=self.layers, damping=self.damping)

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Factors:
        meta = unpack(metadata, "factors")
        layers = meta["layers"]
        parts = ({k: tensors[f"{k}::{part}"] for k in layers} for part in ("QA", "QS", "lambdas"))
        return cls(*parts, {k: float(meta["damping"][k]) for k in layers})


def make_factors(basis: Eigenbasis, lambdas: LambdaState, damping: Damping = Damping()) -> Factors:
    """Average the eigenvalue correction and fix each layer's damping."""
    if lambdas.n_examples == 0:
        raise InputError("no examples were seen while fitting eigenvalue corrections")
    mean = {k: (v / lambdas.n_examples).float() for k, v in lambdas.sums.items()}
    return Factors(dict(basis.QA), dict(basis.QS), mean, {k: damping.resolve(float(v.mean())) for k, v in mean.items()})


def fit_factors(
    lm: LoadedModel,
    batches: Callable[[], Iterable[TokenBatch]],
    fisher: str = "sampled",
    damping: Damping = Damping(),
    seed: int = 0,
    progress: Progress | None = None,
    groups: int = 1,
    block_size: int | None = None,
) -> Factors:
    """All passes in one call, for notebooks; `batches` is called once per pass. With
    ``groups`` > 1 the tracked layers are fitted a group at a time (`pretrace.influence.layer_groups`):
    the same factors, with only one group's state on the device at once; ``block_size``:
    `fit_covariances`."""

    def fit_group(group: LoadedModel) -> Factors:
        cov = fit_covariances(group, batches(), fisher, seed, progress, block_size)
        basis = eigenbasis(cov, group.device, block_size)
        return make_factors(basis, fit_lambdas(group, basis, batches(), fisher, seed, progress), damping)

    return by_layer_group(lm, groups, fit_group, Factors.join)
