"""Per-document gradients of the summed next-token loss, exact or Kronecker-projected."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from pretrace.errors import InputError
from pretrace.influence.capture import Captured, capture, check_finite, float32_matmul
from pretrace.influence.distributed import Ranks
from pretrace.influence.layer_groups import by_layer_group, join_layers
from pretrace.influence.low_rank import factorize
from pretrace.influence.projection import KroneckerProjection
from pretrace.influence.quantization import BITS, dequantize, dequantize_factor, quantize, quantize_factors
from pretrace.influence.quantization import pack as pack_codes
from pretrace.influence.quantization import unpack as unpack_codes
from pretrace.inputs.batching import batches
from pretrace.model.adapter import LoadedModel, resolve_dtype
from pretrace.store.serialization import pack, unpack


def iter_document_gradients(
    lm: LoadedModel,
    sequences: Sequence[Sequence[int]],
    *,
    projection: KroneckerProjection | None = None,
    batch_size: int = 8,
    progress: Callable[[int], None] | None = None,
    first_target: Sequence[int] | None = None,
) -> Iterator[tuple[range, dict[str, torch.Tensor], torch.Tensor]]:
    """Yield (index range, {layer: (B, k_out, k_in) gradients}, (B,) losses) batch by batch.

    With a projection, per-token a and g are projected before the outer product, so the full
    (d_out, d_in) per-document gradient is never formed. ``first_target`` makes the loss that
    of each sequence's tokens from that index on (a query's completion): the raw query
    gradient, in the same space as the documents'.

    On the device, besides the model and its captured (a, g): the projection's P_out and P_in of
    the tracked layers alone (`KroneckerProjection.for_documents`), in the pass's float32 (float64
    for a float64 model): in the eigenbasis computed in float64 and rounded once (5e-8 of the
    largest score, `tests/unit/influence/test_scoring_memory.py`), raw ones drawn in float32;
    never the factors.
    """
    names = [layer.name for layer in lm.layers]
    proj = None if projection is None else projection.for_documents(names, lm.device, lm.accumulate_dtype)
    for index, cap in iter_captures(lm, sequences, batch_size=batch_size, progress=progress, first_target=first_target):
        yield index, {layer.name: layer_gradients(cap, layer.name, proj) for layer in lm.layers}, cap.losses


def iter_captures(
    lm: LoadedModel,
    sequences: Sequence[Sequence[int]],
    *,
    batch_size: int = 8,
    progress: Callable[[int], None] | None = None,
    first_target: Sequence[int] | None = None,
) -> Iterator[tuple[range, Captured]]:
    """Yield (index range, captured a and g) batch by batch, counting progress after each."""
    for index, batch in batches(sequences, batch_size, lm.pad_token_id, first_target):
        yield index, capture(lm, batch, "data")
        if progress is not None:
            progress(batch.size)


def layer_tokens(
    cap: Captured, name: str, projection: KroneckerProjection | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer's per-token (a, g), projected if asked (in the projection's dtype): (B, T, k_in)
    and (B, T, k_out)."""
    a, g = cap.a[name], cap.g[name]
    return (a, g) if projection is None else projection.project_tokens(name, a, g)


def unchecked_layer_gradients(cap: Captured, name: str, projection: KroneckerProjection | None = None) -> torch.Tensor:
    """(B, k_out, k_in) per-document gradients of one layer (projected per token first, if asked),
    not yet checked for inf or nan: for a caller that checks what it computes from them."""
    a, g = layer_tokens(cap, name, projection)
    return float32_matmul(g.transpose(1, 2), a)


def layer_gradients(cap: Captured, name: str, projection: KroneckerProjection | None = None) -> torch.Tensor:
    """(B, k_out, k_in) per-document gradients of one layer, checked finite (the error names the layer)."""
    grads = unchecked_layer_gradients(cap, name, projection)
    check_finite(grads, "document gradient", name)
    return grads


@dataclass
class DocumentGradients:
    """Per-document gradients per layer: (N, k_out, k_in) in `grads`, or with `rank` set the
    factors of each, `grads[name]` (N, k_out, r) and `right[name]` (N, k_in, r). Quantized
    (`bits` set): `grads` (and `right`) hold int8 codes, and `scales[name]` the scales, (N, k_out)
    one per row of a dense store, (N, r) one per rank of a factored one (`pretrace.influence.quantization`)."""

    ids: list[str]
    grads: dict[str, torch.Tensor]
    losses: torch.Tensor  # (N,) summed next-token loss in nats
    projection: dict | None
    right: dict[str, torch.Tensor] = field(default_factory=dict)
    rank: int | None = None
    scales: dict[str, torch.Tensor] = field(default_factory=dict)
    bits: int | None = None

    @classmethod
    def join(cls, groups: Sequence[DocumentGradients]) -> DocumentGradients:
        """The gradients of every layer from those of disjoint layer groups (same documents)."""
        first = groups[0]
        return cls(
            first.ids,
            join_layers([g.grads for g in groups]),
            first.losses,
            first.projection,
            join_layers([g.right for g in groups]),
            first.rank,
            join_layers([g.scales for g in groups]),
            first.bits,
        )

    @property
    def dtype(self) -> str:
        """The stored precision (`stored_gradient_dtype`): float32, bfloat16, int8 or int4."""
        if self.bits is not None:
            return f"int{self.bits}"
        return str(next(iter(self.grads.values())).dtype).removeprefix("torch.")

    def dense(self, name: str) -> torch.Tensor:
        """(N, k_out, k_in), reconstructed from the factors when factored, from the codes and
        scales when quantized (then in float32)."""
        if self.rank is not None:
            left, right = self.factors(name)
            return left @ right.transpose(1, 2)
        return self.grads[name] if self.bits is None else dequantize(self.grads[name], self.scales[name])

    def factors(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """A factored store's (N, k_out, r) and (N, k_in, r) factors, in float32 when quantized."""
        if self.bits is None:
            return self.grads[name], self.right[name]
        return dequantize_factor(self.grads[name], self.scales[name]), dequantize_factor(
            self.right[name], self.scales[name]
        )

    def to_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        packed = (lambda d: d) if self.bits is None else (lambda d: {k: pack_codes(v, self.bits) for k, v in d.items()})
        return pack(
            packed(self.grads)
            | {f"{k}::right": v for k, v in packed(self.right).items()}
            | {f"{k}::scales": v for k, v in self.scales.items()}
            | {"losses": self.losses},
            "document_gradients",
            ids=self.ids,
            layers=list(self.grads),
            projection=self.projection,
            rank=self.rank,
            **(
                {}
                if self.bits is None
                else {"bits": self.bits, "columns": {k: v.shape[-1] for k, v in self.grads.items()}}
            ),
        )

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> DocumentGradients:
        meta = unpack(metadata, "document_gradients")
        layers, rank, bits = meta["layers"], meta["rank"], meta.get("bits")

        def codes(k, key):
            return tensors[key] if bits is None else unpack_codes(tensors[key], bits, meta["columns"][k])

        right = {} if rank is None else {k: codes(k, f"{k}::right") for k in layers}
        grads = {k: codes(k, k) for k in layers}
        scales = {} if bits is None else {k: tensors[f"{k}::scales"] for k in layers}
        return cls(meta["ids"], grads, tensors["losses"], meta["projection"], right, rank, scales, bits)


def compute_document_gradients(
    lm: LoadedModel,
    sequences: Sequence[Sequence[int]],
    ids: Sequence[str],
    *,
    projection: KroneckerProjection | None = None,
    batch_size: int = 8,
    progress: Callable[[int], None] | None = None,
    first_target: Sequence[int] | None = None,
    rank: int | None = None,
    groups: int = 1,
    stored_dtype: str | None = None,
) -> DocumentGradients:
    """Gradients of every document (of every query's completion, with ``first_target``),
    gathered on the CPU for storage in ``stored_dtype`` if given (`stored_gradient_dtype`; they
    are computed in float32 or wider); with ``rank``, as rank-r factors (`pretrace.influence.low_rank`);
    with ``groups`` > 1, a layer group a pass (`pretrace.influence.layer_groups`)."""
    if rank is not None and rank < 1:
        raise InputError(f"document_rank: must be a positive integer or null, got {rank}")
    return by_layer_group(
        lm,
        groups,
        lambda group: _gathered(
            group, sequences, ids, projection, batch_size, progress, first_target, rank, stored_dtype
        ),
        DocumentGradients.join,
    )


def compute_document_gradients_by_rank(
    lm: LoadedModel, sequences: Sequence[Sequence[int]], ids: Sequence[str], ranks: Ranks, **options
) -> DocumentGradients | None:
    """`compute_document_gradients` (same ``options``) under torch.distributed: each rank computes
    its contiguous block of whole batches (`Ranks.block`), and rank 0 gathers every block in
    document order and returns the whole store; the other ranks return None."""
    batch_size = options.get("batch_size", 8)
    if ranks.single:
        return compute_document_gradients(lm, sequences, ids, **options)
    mine = ranks.block(len(sequences), batch_size)
    counts = [len(Ranks(r, ranks.world).block(len(sequences), batch_size)) for r in range(ranks.world)]
    rows: dict[str, torch.Tensor] = {}
    if mine:  # a rank past the last batch computes nothing (rank 0 always has the first batch)
        part = compute_document_gradients(lm, sequences[mine.start : mine.stop], ids[mine.start : mine.stop], **options)
        fields = {"grads": part.grads, "right": part.right, "scales": part.scales}
        rows = {f"{kind}::{k}": v for kind, d in fields.items() for k, v in d.items()} | {"losses": part.losses}
    gathered = ranks.gather_rows(rows, counts)
    if gathered is None:
        return None

    def layers(kind: str) -> dict[str, torch.Tensor]:
        return {k: gathered[f"{kind}::{k}"] for k in fields[kind]}

    return DocumentGradients(
        list(ids),
        layers("grads"),
        gathered["losses"],
        part.projection,
        layers("right"),
        part.rank,
        layers("scales"),
        part.bits,
    )


def stored_layer(
    value: torch.Tensor,
    rank: int | None,
    stored_dtype: str | None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """One layer's float (N, k_out, k_in) gradients as a store keeps them, on the CPU: (dense
    gradients, codes or left factors; right factors or None; scales or None), for ``document_rank``
    = rank and `stored_gradient_dtype` = stored_dtype (None: as computed). Per document, so a
    batch and a whole store give the same bytes."""
    bits = BITS.get(stored_dtype)
    dtype = None if bits is not None or stored_dtype is None else resolve_dtype(stored_dtype)
    if rank is not None:
        L, R = factorize(value, rank)
        scales = None
        if bits is not None:
            L, R, scales = quantize_factors(L, R, bits)
            scales = scales.cpu()
        return L.to(device="cpu", dtype=dtype), R.to(device="cpu", dtype=dtype), scales
    if bits is not None:
        codes, row_scales = quantize(value, bits)
        return codes.cpu(), None, row_scales.cpu()
    return value.to(device="cpu", dtype=dtype), None, None


def stored_as(full: DocumentGradients, rank: int | None, stored_dtype: str | None) -> DocumentGradients:
    """A dense float store kept at ``rank`` in ``stored_dtype``, as `compute_document_gradients`
    would have stored it, without another pass over the documents."""
    parts = {name: stored_layer(grads, rank, stored_dtype) for name, grads in full.grads.items()}
    return _assembled(full.ids, parts, full.losses, full.projection, rank, BITS.get(stored_dtype))


def _assembled(
    ids: Sequence[str],
    parts: dict[str, tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]],
    losses: torch.Tensor,
    projection: dict | None,
    rank: int | None,
    bits: int | None,
) -> DocumentGradients:
    return DocumentGradients(
        list(ids),
        {k: g for k, (g, _, _) in parts.items()},
        losses,
        projection,
        {k: r for k, (_, r, _) in parts.items() if r is not None},
        rank,
        {k: s for k, (_, _, s) in parts.items() if s is not None},
        bits,
    )


def _gathered(
    lm: LoadedModel,
    sequences: Sequence[Sequence[int]],
    ids: Sequence[str],
    projection: KroneckerProjection | None,
    batch_size: int,
    progress: Callable[[int], None] | None,
    first_target: Sequence[int] | None,
    rank: int | None,
    stored_dtype: str | None,
) -> DocumentGradients:
    stored: dict[str, list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]]] = {
        layer.name: [] for layer in lm.layers
    }
    losses = []
    for _, batch_grads, batch_losses in iter_document_gradients(
        lm, sequences, projection=projection, batch_size=batch_size, progress=progress, first_target=first_target
    ):
        for name, value in batch_grads.items():
            stored[name].append(stored_layer(value, rank, stored_dtype))
        losses.append(batch_losses.cpu())

    def cat(tensors):
        return None if tensors[0] is None else torch.cat(tensors)

    joined = {name: tuple(cat(part) for part in zip(*pieces)) for name, pieces in stored.items()}
    return _assembled(
        ids,
        joined,
        torch.cat(losses),
        None if projection is None else projection.describe(),
        rank,
        BITS.get(stored_dtype),
    )
