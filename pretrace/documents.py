"""Per-document gradients of the summed next-token loss, exact or Kronecker-projected."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch

from .batching import batches
from .capture import capture, check_finite
from .serialization import pack, unpack
from .model import LoadedModel
from .projection import KroneckerProjection


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
    """
    proj = projection.to(lm.device, lm.accumulate_dtype) if projection is not None else None
    for index, batch in batches(sequences, batch_size, lm.pad_token_id, first_target):
        cap = capture(lm, batch, "data")
        grads = {}
        for layer in lm.layers:
            a, g = cap.a[layer.name], cap.g[layer.name]
            if proj is not None:
                a, g = proj.project_tokens(layer.name, a, g)
            grads[layer.name] = torch.bmm(g.transpose(1, 2), a)
            check_finite(grads[layer.name], "document gradient", layer.name)
        yield index, grads, cap.losses
        if progress is not None:
            progress(batch.size)


@dataclass
class DocumentGradients:
    ids: list[str]
    grads: dict[str, torch.Tensor]  # (N, k_out, k_in) float32
    losses: torch.Tensor  # (N,) summed next-token loss in nats
    projection: dict | None

    def to_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        return pack(
            self.grads | {"losses": self.losses},
            "document_gradients",
            ids=self.ids,
            layers=list(self.grads),
            projection=self.projection,
        )

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> "DocumentGradients":
        meta = unpack(metadata, "document_gradients")
        return cls(meta["ids"], {k: tensors[k] for k in meta["layers"]}, tensors["losses"], meta["projection"])


def compute_document_gradients(
    lm: LoadedModel,
    sequences: Sequence[Sequence[int]],
    ids: Sequence[str],
    *,
    projection: KroneckerProjection | None = None,
    batch_size: int = 8,
    progress: Callable[[int], None] | None = None,
    first_target: Sequence[int] | None = None,
) -> DocumentGradients:
    """Gradients of every document (of every query's completion, with ``first_target``),
    gathered on the CPU for storage."""
    grads: dict[str, list[torch.Tensor]] = {layer.name: [] for layer in lm.layers}
    losses = []
    for _, batch_grads, batch_losses in iter_document_gradients(
        lm, sequences, projection=projection, batch_size=batch_size, progress=progress, first_target=first_target
    ):
        for name, value in batch_grads.items():
            grads[name].append(value.cpu())
        losses.append(batch_losses.cpu())
    return DocumentGradients(
        list(ids),
        {k: torch.cat(v) for k, v in grads.items()},
        torch.cat(losses),
        None if projection is None else projection.describe(),
    )
