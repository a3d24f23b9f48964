"""One forward and one backward pass per batch, capturing every tracked layer's inputs and
pre-activation gradients for all tokens at once.

With a = layer input (plus a constant 1 for the bias) and g = dLoss/d(layer output), the
per-example weight gradient is sum_t g_t a_t^T, so (a, g) per token is all EK-FAC, document
gradients and scores need. Parameters are frozen during the pass: autograd then computes only
gradients with respect to activations, which is cheaper than a training step's backward.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from pretrace.errors import NumericalError
from pretrace.inputs.batching import TokenBatch
from pretrace.model.activation_checkpointing import checkpointed_blocks
from pretrace.model.adapter import HALF_PRECISION, LoadedModel
from pretrace.model.lm_head import SplitModel, split_at_head

Labels = Literal["data", "sampled"]


@dataclass
class Captured:
    """Per-token layer inputs and output gradients for one batch, padding zeroed: float32 or
    wider, or the model's bf16/fp16 on a GPU (`LoadedModel.keeps_half_precision`)."""

    a: dict[str, torch.Tensor]  # (B, T, d_in), bias column included
    g: dict[str, torch.Tensor]  # (B, T, d_out)
    losses: torch.Tensor  # (B,) summed loss of each sequence over its target tokens

    def per_example_gradients(self, name: str) -> torch.Tensor:
        """(B, d_out, d_in) exact per-example gradients of one layer, in float32 or wider."""
        return float32_matmul(self.g[name].transpose(1, 2), self.a[name])


def float32_matmul(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x @ y (2-D or batched 3-D) in float32 or wider: half-precision operands of one dtype on a
    GPU multiply on tensor cores with float32 accumulation and output; anything else is upcast
    to float32 first (a no-op for float32 and float64)."""
    if x.is_cuda and x.dtype in HALF_PRECISION and y.dtype == x.dtype:
        try:
            return (torch.bmm if x.dim() == 3 else torch.mm)(x, y, out_dtype=torch.float32)
        except TypeError:  # a torch whose products take no out_dtype: upcast, as on a CPU
            pass
    wide = torch.promote_types(torch.promote_types(x.dtype, y.dtype), torch.float32)
    return x.to(wide) @ y.to(wide)


@contextmanager
def _frozen_parameters(model: torch.nn.Module) -> Iterator[None]:
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _differentiable_embeddings(module, inputs, output):
    # With every parameter frozen, the graph must start at the embeddings' output.
    return output.detach().requires_grad_(True)


LOGITS_CHUNK_TOKENS = 512
"""Predicted positions whose logits exist at once in a captured pass. At Command-R's 256k
vocabulary a chunk's float32 logits are 0.5 GB, where a 2048-token document's are 2.1 GB (with
their log-softmax and gradients, 8.4 GB); the head's matrix products stay large enough to run
at full speed."""


def _predicting(batch: TokenBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The positions whose next token is a target: (B, T-1) mask, their targets and the index of
    each one's sequence, in row-major order (the order sampled labels are drawn in)."""
    mask = batch.target_mask[:, 1:].bool()
    return mask, batch.input_ids[:, 1:][mask], mask.nonzero()[:, 0]


def _uniforms(rows: int, labels: Labels, generator: torch.Generator | None, device: torch.device):
    """One uniform number per predicted position for sampled labels (None for data labels),
    drawn at once so that chunked and unchunked losses draw the same labels."""
    if labels != "sampled":
        return None
    return torch.rand(rows, generator=generator, device=device)


def _row_losses(logits: torch.Tensor, targets: torch.Tensor, uniforms: torch.Tensor | None) -> torch.Tensor:
    """Next-token NLL of each row of (rows, vocab) logits, in float32 or wider. With ``uniforms``
    the targets are drawn from the model's own predictive distribution (`_sampled_targets`),
    which makes the gradient covariance the true Fisher rather than the empirical one."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if uniforms is not None:
        targets = _sampled_targets(logits, uniforms)
    return F.cross_entropy(logits, targets, reduction="none")


@torch.no_grad()
def _sampled_targets(logits: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Each row's label drawn by the inverse CDF of its softmax at the row's uniform number."""
    cdf = torch.softmax(logits, dim=-1).cumsum_(dim=-1)
    point = (uniforms.to(cdf.dtype) * cdf[:, -1]).unsqueeze(-1)
    return torch.searchsorted(cdf, point, right=True).squeeze(-1).clamp_(max=logits.shape[-1] - 1)


def _per_sequence(rows: torch.Tensor, sequence: torch.Tensor, size: int) -> torch.Tensor:
    return torch.zeros(size, dtype=rows.dtype, device=rows.device).index_add_(0, sequence, rows)


def sequence_losses(
    logits: torch.Tensor,
    batch: TokenBatch,
    labels: Labels = "data",
    generator: torch.Generator | None = None,
    first: int | None = None,
) -> torch.Tensor:
    """Summed next-token negative log-likelihood of each sequence over its target tokens, from
    logits of every position at once (`chunked_sequence_losses` computes the same from hidden
    states, a chunk at a time).

    `logits` cover every position, or (with `first`) only positions first..T-2, the ones that
    predict tokens first+1..T-1. Sampled labels (`_row_losses`) are drawn from ``generator``.
    """
    if first is None:
        first, logits = 0, logits[:, :-1]
    mask, targets, sequence = _predicting(batch)
    rows = logits[mask[:, first:]]
    uniforms = _uniforms(len(rows), labels, generator, logits.device)
    return _per_sequence(_row_losses(rows, targets, uniforms), sequence, batch.size)


def chunked_sequence_losses(
    split: SplitModel,
    hidden: torch.Tensor,
    batch: TokenBatch,
    labels: Labels = "data",
    generator: torch.Generator | None = None,
    chunk_tokens: int = LOGITS_CHUNK_TOKENS,
) -> torch.Tensor:
    """`sequence_losses` (the same labels drawn, the same values to float rounding) from the final
    hidden states (B, T, hidden), ``chunk_tokens`` predicted positions at a time through the LM
    head, so that no more than one chunk's (chunk_tokens x vocab) float32 logits ever exist.

    Where the head is a plain linear map (`SplitModel.linear_head_weight`), each chunk's gradient
    with respect to its hidden states is computed in closed form with its losses and its logits
    freed at once (`_linear_head_losses`); any other head runs checkpointed, its logits
    recomputed a chunk at a time in the backward pass."""
    mask, targets, sequence = _predicting(batch)
    rows = hidden[:, :-1][mask]
    uniforms = _uniforms(len(rows), labels, generator, hidden.device)
    weight = split.linear_head_weight
    if weight is None:
        losses = _checkpointed_head_losses(split, rows, targets, uniforms, chunk_tokens)
    else:
        losses = _linear_head_losses(split, weight, rows, targets, uniforms, chunk_tokens)
    return _per_sequence(losses, sequence, batch.size)


def _chunks(rows: int, chunk_tokens: int) -> Iterator[slice]:
    return (slice(start, start + chunk_tokens) for start in range(0, rows, chunk_tokens))


def _checkpointed_head_losses(split, rows, targets, uniforms, chunk_tokens) -> torch.Tensor:
    def chunk_losses(h, t, u):
        return _row_losses(split.head(h), t, u)

    pieces = [
        checkpoint(
            chunk_losses,
            rows[part],
            targets[part],
            None if uniforms is None else uniforms[part],
            use_reentrant=False,
            preserve_rng_state=False,
        )
        for part in _chunks(len(rows), chunk_tokens)
    ]
    losses = torch.cat(pieces) if pieces else rows.sum(dim=-1)  # no predicted position: empty, in the graph
    return losses.to(torch.promote_types(losses.dtype, torch.float32))


class _GivenGradient(torch.autograd.Function):
    """Losses of ``rows`` whose gradient with respect to the rows is already known."""

    @staticmethod
    def forward(ctx, rows: torch.Tensor, losses: torch.Tensor, grad_rows: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(grad_rows)
        return losses.clone()

    @staticmethod
    def backward(ctx, grad_losses: torch.Tensor):
        (grad_rows,) = ctx.saved_tensors
        return grad_rows * grad_losses.unsqueeze(-1).to(grad_rows.dtype), None, None


def _linear_head_losses(split, weight, rows, targets, uniforms, chunk_tokens) -> torch.Tensor:
    """Each chunk's NLL and, while its logits exist, the NLL's gradient with respect to its hidden
    states: ((softmax - onehot) through the family's scale and soft cap) @ weight. The backward
    pass then only hands these gradients on: no logit is computed twice."""
    wide = torch.promote_types(rows.dtype, torch.float32)
    losses = torch.empty(len(rows), dtype=wide, device=rows.device)
    grad_rows = torch.empty_like(rows) if rows.requires_grad else None
    with torch.no_grad():
        for part in _chunks(len(rows), chunk_tokens):
            u = None if uniforms is None else uniforms[part]
            losses[part], grad = _nll_and_hidden_gradient(
                split, weight, rows[part], targets[part], u, grad_rows is not None
            )
            if grad_rows is not None:
                grad_rows[part] = grad
    if grad_rows is None:
        return losses
    return _GivenGradient.apply(rows, losses, grad_rows)


def _nll_and_hidden_gradient(split, weight, hidden, targets, uniforms, need_gradient: bool):
    """The rows' NLL (as `_row_losses`: the same labels drawn, the same values to float rounding)
    and its gradient with respect to ``hidden`` (None unless ``need_gradient``): the float32
    logits are turned into their softmax and then into the gradient in place, one copy in all."""
    product = split.output_embeddings(hidden)
    logits = split.after_head(product)
    probs = logits.to(torch.promote_types(logits.dtype, torch.float32))
    del logits
    if uniforms is not None:
        targets = _sampled_targets(probs, uniforms)
    picked = targets.unsqueeze(-1)
    # In place: probs may be product itself, which only a soft cap's backward reads (and a soft
    # cap's logits are a tensor of their own).
    probs.sub_(probs.amax(dim=-1, keepdim=True))
    shifted_target = probs.gather(-1, picked).squeeze(-1)
    sums = probs.exp_().sum(dim=-1)
    losses = sums.log() - shifted_target  # logsumexp - logit, both shifted by the row's max
    if not need_gradient:
        return losses, None
    grad = probs.div_(sums.unsqueeze(-1))
    grad.scatter_add_(-1, picked, torch.full_like(picked, -1, dtype=grad.dtype))  # softmax - onehot
    grad = split.after_head_backward(product, grad)  # d loss / d product
    return losses, (grad.to(product.dtype) @ weight.to(product.dtype)).to(hidden.dtype)


def capture(
    lm: LoadedModel,
    batch: TokenBatch,
    labels: Labels = "data",
    generator: torch.Generator | None = None,
    chunk_tokens: int | None = LOGITS_CHUNK_TOKENS,
) -> Captured:
    """Run one forward and one backward pass and return (a, g) of every tracked layer.

    The loss is computed from the final hidden states ``chunk_tokens`` predicted positions at a
    time (`chunked_sequence_losses`); from all logits at once when ``chunk_tokens`` is None, when
    the LM head is itself a tracked layer (its hooks must see one call), or when the model cannot
    be split at its head (`pretrace.model.lm_head`)."""
    batch = batch.to(lm.device)
    head = lm.model.get_output_embeddings() if hasattr(lm.model, "get_output_embeddings") else None
    head_tracked = head is not None and any(layer.module is head for layer in lm.layers)
    split = None if chunk_tokens is None or head_tracked else split_at_head(lm.model)
    inputs: dict[str, torch.Tensor] = {}
    outputs: dict[str, torch.Tensor] = {}
    grads: dict[str, torch.Tensor] = {}
    handles = []

    def forward_hook(name: str):
        def hook(module, args, output):
            inputs[name] = args[0].detach()
            outputs[name] = output.detach()

            def store_grad(grad: torch.Tensor) -> None:
                grads[name] = grad.detach()

            if output.requires_grad:  # not so in a checkpointed block's recomputation, outside the graph
                output.register_hook(store_grad)

        return hook

    for layer in lm.layers:
        handles.append(layer.module.register_forward_hook(forward_hook(layer.name)))
    handles.append(lm.model.get_input_embeddings().register_forward_hook(_differentiable_embeddings))
    blocks = checkpointed_blocks(lm.model) if lm.activation_checkpointing else nullcontext()
    try:
        with blocks, _frozen_parameters(lm.model):  # frozen through the backward too, where blocks are recomputed
            if split is None:
                losses = _unchunked_losses(lm, batch, labels, generator, outputs, trimmed=not head_tracked)
            else:
                losses = _chunked_losses(lm, split, batch, labels, generator, outputs, chunk_tokens)
            losses.sum().backward()
    finally:
        for handle in handles:
            handle.remove()

    keep = None if lm.keeps_half_precision else lm.accumulate_dtype  # None: as the model computed them
    mask = batch.attention_mask.unsqueeze(-1)
    padded = not bool(batch.attention_mask.all())
    a, g = {}, {}
    for layer in lm.layers:
        if layer.name not in grads:
            raise NumericalError(
                f"layer {layer.name} received no gradient: is it used in the forward pass of this model?"
            )
        x, grad = inputs[layer.name], grads[layer.name]
        if keep is not None:
            x, grad = x.to(keep), grad.to(keep)
        if padded:
            x, grad = x * mask.to(x.dtype), grad * mask.to(grad.dtype)
        a[layer.name] = torch.cat([x, mask.to(x.dtype)], dim=-1) if layer.has_bias else x
        g[layer.name] = grad
    return Captured(a, g, losses.detach())


def _unchunked_losses(lm, batch, labels, generator, outputs, trimmed: bool) -> torch.Tensor:
    """The model's own forward, every predicting position's logits at once; ``trimmed``: only
    from the first predicting position on (not for a tracked head, whose hooks see every position)."""
    # The LM head and softmax dominate small models: compute them only where tokens are predicted.
    first = _first_predicting_position(batch)
    options = {"logits_to_keep": torch.arange(first, batch.input_ids.shape[1] - 1, device=lm.device)}
    if not trimmed or not _accepts(type(lm.model), "logits_to_keep"):
        first, options = None, {}
    options |= _no_cache(lm.model)
    with lm.autocast():
        logits = lm.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, **options).logits
    if not all_finite(logits):
        _raise_first_non_finite(outputs)
    return sequence_losses(logits, batch, labels, generator, first)


def _chunked_losses(lm, split, batch, labels, generator, outputs, chunk_tokens) -> torch.Tensor:
    """The body's forward to the final hidden states, then the head a chunk at a time."""
    with lm.autocast():
        hidden = split.hidden_states(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, **_no_cache(split.body)
        )
        if not all_finite(hidden):
            _raise_first_non_finite(outputs)
        losses = chunked_sequence_losses(split, hidden, batch, labels, generator, chunk_tokens)
    if not all_finite(losses):
        _raise_first_non_finite(outputs)
    return losses


def _no_cache(model: torch.nn.Module) -> dict[str, bool]:
    """No key-value cache: a captured pass never generates, and a checkpointed block's
    recomputation would append its keys and values to the cache again."""
    return {"use_cache": False} if _accepts(type(model), "use_cache") else {}


def _first_predicting_position(batch: TokenBatch) -> int:
    """The first position whose next token is a target in some sequence of the batch."""
    targets = batch.target_mask[:, 1:].any(dim=0).nonzero()
    return int(targets[0]) if len(targets) else 0


@functools.cache
def _accepts(forward_owner: type, argument: str) -> bool:
    return argument in inspect.signature(forward_owner.forward).parameters


def all_finite(tensor: torch.Tensor) -> bool:
    """One reduction instead of a full boolean pass: a sum is finite when every term is, and
    only when the sum itself overflows do we look element by element."""
    return bool(torch.isfinite(tensor.sum())) or bool(torch.isfinite(tensor).all())


def _raise_first_non_finite(outputs: dict[str, torch.Tensor]) -> None:
    for name, output in outputs.items():  # hooks ran, and so were filled, in forward order
        check_finite(output, "output", name)
    raise NumericalError(
        "the model's logits are not finite although every tracked layer's output is; run with dtype "
        "float32 or bfloat16, or check the model's weights"
    )


def check_finite(tensor: torch.Tensor, what: str, layer: str) -> None:
    """Raise a NumericalError naming the layer when `tensor` holds inf or nan."""
    if not all_finite(tensor):
        raise NumericalError(
            f"{what} of layer {layer} is not finite (inf or nan). This usually means float16 "
            "overflow: run with dtype float32 or bfloat16, or check the model's weights."
        )
