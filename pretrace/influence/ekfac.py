"""EK-FAC: Kronecker-factored eigenbases with eigenvalues corrected on per-example gradients.

Fitting is split into passes whose partial results are sums, so a corpus can be fitted shard
by shard and merged: `CovarianceState` (A = sum a a^T, S = sum g g^T) -> `Eigenbasis`
(eigenvectors in float64) -> `LambdaState` (sum over examples of (Q_S^T dW Q_A)^2) ->
`Factors` (the damped preconditioner).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from pretrace.config import Damping
from pretrace.errors import InputError
from pretrace.influence.capture import Captured, Labels, capture, check_finite, float32_matmul
from pretrace.influence.distributed import SINGLE, Ranks
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


FLUSH_EVERY = 64
"""Terms a `DeviceSum` adds in its running precision before adding the running sum into its
float64 total: a term then costs one fused product-and-add on the device instead of a float64
pass over the matrix, and a sum over a long shard stays as exact as float64 (a float32 running
sum of a shard's many terms would drop the small ones: tests/unit/influence/test_device_sums.py)."""


class DeviceSum:
    """A (rows, columns) float64 sum kept on the device: terms accumulate in float32 (float64
    for float64 terms) and are folded into the float64 total every `FLUSH_EVERY` terms, so
    nothing crosses to the host or waits for the device per batch."""

    def __init__(self, rows: int, columns: int, device: torch.device, flush_every: int = FLUSH_EVERY) -> None:
        self._total = torch.zeros(rows, columns, dtype=torch.float64, device=device)
        self._running: torch.Tensor | None = None
        self._terms = 0
        self._flush_every = flush_every

    def _buffer(self, dtype: torch.dtype) -> torch.Tensor:
        if self._running is None:
            wide = torch.float64 if dtype == torch.float64 else torch.float32
            self._running = torch.zeros_like(self._total, dtype=wide)
        return self._running

    def add(self, term: torch.Tensor) -> None:
        self._buffer(term.dtype).add_(term)
        self._counted()

    def add_gram(self, x: torch.Tensor) -> None:
        """Add x^T x (float32 products or wider)."""
        running = self._buffer(x.dtype)
        if x.dtype == running.dtype:
            running.addmm_(x.T, x)
        else:  # half precision: products accumulate in float32 on tensor cores
            running += float32_matmul(x.T, x)
        self._counted()

    def _counted(self) -> None:
        self._terms += 1
        if self._terms % self._flush_every == 0:
            self._flush()

    def _flush(self) -> None:
        if self._running is not None:
            self._total += self._running
            self._running.zero_()

    def total(self) -> torch.Tensor:
        """The float64 sum of every term added, on the device."""
        self._flush()
        return self._total

    def parts(self) -> list[torch.Tensor]:
        """The device tensors to all-reduce (`_device_totals`)."""
        return [self.total()]

    def whole(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        """The sum from its `parts` on the host."""
        return parts[0]


class BlockDiagonalSum:
    """A side's covariance sum x^T x kept as its diagonal blocks only (`diagonal_blocks`; Grosse
    et al.'s within-layer block-diagonal approximation), a `DeviceSum` per block: the device holds
    12 bytes per element of the blocks, never of the whole (size, size) square."""

    def __init__(
        self, size: int, device: torch.device, block_size: int | None = None, flush_every: int = FLUSH_EVERY
    ) -> None:
        self.size = size
        self.blocks = diagonal_blocks(size, block_size)
        self._sums = [DeviceSum(b.stop - b.start, b.stop - b.start, device, flush_every) for b in self.blocks]

    def add_gram(self, x: torch.Tensor) -> None:
        """Add each diagonal block of x^T x."""
        for block, total in zip(self.blocks, self._sums, strict=True):
            total.add_gram(x[:, block])

    def parts(self) -> list[torch.Tensor]:
        """Each block's float64 total, on the device (`_device_totals`)."""
        return [total.total() for total in self._sums]

    def whole(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        """The blocks placed on the diagonal of a (size, size) float64 square, zero elsewhere (the
        stored `CovarianceState`, decomposed a block at a time by `eigenbasis`); one block is the square."""
        if len(parts) == 1:
            return parts[0]
        square = torch.zeros(self.size, self.size, dtype=torch.float64, device=parts[0].device)
        for block, part in zip(self.blocks, parts, strict=True):
            square[block, block] = part
        return square


def _device_totals(
    sums: Mapping[str, DeviceSum | BlockDiagonalSum], what: str, ranks: Ranks
) -> dict[str, torch.Tensor]:
    """The float64 totals (a block-diagonal sum's blocks) summed over the ranks, checked finite
    once (a non-finite term leaves its sum non-finite), then on the host: one copy per call, not
    one per batch."""
    parts = {name: s.parts() for name, s in sums.items()}
    ranks.sum_(part for layer in parts.values() for part in layer)
    for name, layer in parts.items():
        for part in layer:
            check_finite(part, what, name)
    return {name: sums[name].whole([part.cpu() for part in layer]) for name, layer in parts.items()}


def fit_covariances(
    lm: LoadedModel,
    batches: Iterable[TokenBatch],
    fisher: str = "sampled",
    seed: int = 0,
    progress: Progress | None = None,
    block_size: int | None = None,
    ranks: Ranks = SINGLE,
) -> CovarianceState:
    """First EK-FAC pass: A and S summed over every real token on the model's device
    (`DeviceSum`); the float64 sums come back to the host once. With ``block_size``, a side
    wider than it keeps only its diagonal blocks (`BlockDiagonalSum`: on the device, the blocks
    alone): a layer too wide to eigendecompose whole is decomposed a block at a time. Under torch.distributed (``ranks``)
    each rank sums every world-th batch and the sums are all-reduced on the device."""
    A = {layer.name: BlockDiagonalSum(layer.d_in, lm.device, block_size) for layer in lm.layers}
    S = {layer.name: BlockDiagonalSum(layer.d_out, lm.device, block_size) for layer in lm.layers}
    n_tokens = n_examples = 0
    for batch, cap in _fitting_passes(lm, ranks.strided(batches), fisher, seed, progress):
        for name in A:
            A[name].add_gram(cap.a[name].flatten(0, 1))
            S[name].add_gram(cap.g[name].flatten(0, 1))
        n_tokens += batch.n_tokens
        n_examples += batch.size
    n_tokens, n_examples = ranks.sum_counts([n_tokens, n_examples], lm.device)
    return CovarianceState(
        _device_totals(A, "activation covariance", ranks),
        _device_totals(S, "gradient covariance", ranks),
        n_tokens,
        n_examples,
    )


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
    """Eigendecompose the token-averaged covariances in float64 on ``device`` (on the host for a
    matrix the device cannot hold), one matrix (with ``block_size``: one diagonal block,
    `fit_covariances`) at a time (a GPU's float64 eigensolver is far faster than the host's for
    d in the thousands). A block-diagonal side
    has a block-diagonal eigenbasis, stored whole so every use of the factors is unchanged."""
    if cov.n_tokens == 0:
        raise InputError("no tokens were seen while fitting covariances: the fitting data is empty")
    QA, QS, eA, eS = {}, {}, {}, {}
    for name in cov.A:
        for source, Q, e in ((cov.A[name], QA, eA), (cov.S[name], QS, eS)):
            size = source.shape[0]
            Q[name], e[name] = torch.zeros(size, size), torch.zeros(size)
            for block in diagonal_blocks(size, block_size):
                values, vectors = _eigh(source[block, block], cov.n_tokens, device, name)
                Q[name][block, block], e[name][block] = vectors.float().cpu(), values.float().cpu()
    return Eigenbasis(QA, QS, eA, eS)


def _eigh(
    block: torch.Tensor, n_tokens: int, device: torch.device | str, name: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues and eigenvectors of a token-averaged covariance block in float64, on
    ``device`` when its memory holds the matrix and the solver's workspace, else on the host."""
    try:
        return _float64_eigh(block.to(device), n_tokens, name)
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return _float64_eigh(block.cpu(), n_tokens, name)


def _float64_eigh(block: torch.Tensor, n_tokens: int, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    matrix = block.to(torch.float64) / n_tokens
    check_finite(matrix, "covariance", name)
    return torch.linalg.eigh(0.5 * (matrix + matrix.T))


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


@dataclass(frozen=True)
class BlockDiagonal:
    """A square matrix zero off its diagonal blocks, held as the blocks alone: a block-diagonal
    eigenbasis (`factor_block_size`) on the device costs the blocks' floats, not the square's.
    ``x @ Q``, ``Q @ x`` and ``Q.T`` multiply block by block, so `rotated_gradients` takes it as is."""

    blocks: list[slice]
    parts: list[torch.Tensor]

    @classmethod
    def of(
        cls, square: torch.Tensor, block_size: int | None, device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor | BlockDiagonal:
        """``square`` on the device: as its blocks when ``block_size`` splits it, else whole."""
        blocks = diagonal_blocks(square.shape[0], block_size)
        if len(blocks) == 1:
            return square.to(device, dtype)
        if any(square[b, : b.start].any() or square[b, b.stop :].any() for b in blocks):
            raise InputError(
                f"factor_block_size: {block_size} does not split the eigenbasis into its blocks; "
                "refit the eigenbasis with the same factor_block_size"
            )
        return cls(blocks, [square[block, block].to(device, dtype) for block in blocks])

    @property
    def shape(self) -> tuple[int, int]:
        return (self.blocks[-1].stop,) * 2

    @property
    def dtype(self) -> torch.dtype:
        return self.parts[0].dtype

    @property
    def T(self) -> BlockDiagonal:
        return BlockDiagonal(self.blocks, [part.T for part in self.parts])

    def __rmatmul__(self, x: torch.Tensor) -> torch.Tensor:
        out = x.new_empty(*x.shape[:-1], self.shape[1])
        for block, part in zip(self.blocks, self.parts, strict=True):
            out[..., block] = x[..., block] @ part
        return out

    def __matmul__(self, x: torch.Tensor) -> torch.Tensor:
        return self.T.__rmatmul__(x.transpose(-1, -2)).transpose(-1, -2)


def rotated_gradients(
    a: torch.Tensor, g: torch.Tensor, QA: torch.Tensor | BlockDiagonal, QS: torch.Tensor | BlockDiagonal
) -> torch.Tensor:
    """Per-example Q_S^T (sum_t g_t a_t^T) Q_A, rotating whichever side is cheaper (in the
    eigenbases' dtype: captured half-precision values are upcast first). Q_S and Q_A may be
    some of the eigenvectors only (k_out, k_in columns): the result is then that block; or
    block-diagonal (`BlockDiagonal`)."""
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
    ranks: Ranks = SINGLE,
    block_size: int | None = None,
) -> LambdaState:
    """Second EK-FAC pass: the eigenvalue correction, summed over examples on the device
    (`DeviceSum`) and all-reduced over ``ranks`` like `fit_covariances`. With the fit's
    ``block_size``, a block-diagonal eigenbasis is on the device as its blocks (`BlockDiagonal`)."""
    sums = {layer.name: DeviceSum(layer.d_out, layer.d_in, lm.device) for layer in lm.layers}
    QA = {k: BlockDiagonal.of(basis.QA[k], block_size, lm.device, lm.accumulate_dtype) for k in sums}
    QS = {k: BlockDiagonal.of(basis.QS[k], block_size, lm.device, lm.accumulate_dtype) for k in sums}
    n_examples = 0
    for batch, cap in _fitting_passes(lm, ranks.strided(batches), fisher, seed, progress):
        for name in sums:
            sums[name].add(rotated_gradients(cap.a[name], cap.g[name], QA[name], QS[name]).square().sum(dim=0))
        n_examples += batch.size
    (n_examples,) = ranks.sum_counts([n_examples], lm.device)
    return LambdaState(_device_totals(sums, "eigenvalue correction", ranks), n_examples)


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
    ranks: Ranks = SINGLE,
) -> Factors:
    """All passes in one call, for notebooks; `batches` is called once per pass. With
    ``groups`` > 1 the tracked layers are fitted a group at a time (`pretrace.influence.layer_groups`):
    the same factors, with only one group's state on the device at once; ``block_size``:
    `fit_covariances`; ``ranks``: each rank fits its share of the batches (`pretrace.influence.distributed`),
    every rank gets the same factors."""

    def fit_group(group: LoadedModel) -> Factors:
        cov = fit_covariances(group, batches(), fisher, seed, progress, block_size, ranks)
        basis = eigenbasis(cov, group.device, block_size)  # the same all-reduced sums on every rank
        return make_factors(
            basis, fit_lambdas(group, basis, batches(), fisher, seed, progress, ranks, block_size), damping
        )

    return by_layer_group(lm, groups, fit_group, Factors.join)
