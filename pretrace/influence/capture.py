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

from pretrace.errors import NumericalError
from pretrace.inputs.batching import TokenBatch
from pretrace.model.activation_checkpointing import checkpointed_blocks
from pretrace.model.adapter import HALF_PRECISION, LoadedModel

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


def sequence_losses(
    logits: torch.Tensor,
    batch: TokenBatch,
    labels: Labels = "data",
    generator: torch.Generator | None = None,
    first: int | None = None,
) -> torch.Tensor:
    """Summed next-token negative log-likelihood of each sequence over its target tokens.

    `logits` cover every position, or (with `first`) only positions first..T-2, the ones that
    predict tokens first+1..T-1. With labels="sampled" the targets are drawn from the model's
    own predictive distribution, which makes the gradient covariance the true Fisher rather
    than the empirical one.
    """
    if first is None:
        first, logits = 0, logits[:, :-1]
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    mask = batch.target_mask[:, first + 1 :]
    targets = batch.input_ids[:, first + 1 :]
    vocab = logits.shape[-1]
    if labels == "sampled":
        with torch.no_grad():
            probs = torch.softmax(logits.reshape(-1, vocab), dim=-1)
            targets = torch.multinomial(probs, 1, generator=generator).view_as(targets)
    nll = F.cross_entropy(logits.reshape(-1, vocab), targets.reshape(-1), reduction="none")
    return (nll.view_as(targets) * mask).sum(dim=1)


def capture(
    lm: LoadedModel,
    batch: TokenBatch,
    labels: Labels = "data",
    generator: torch.Generator | None = None,
) -> Captured:
    """Run one forward and one backward pass and return (a, g) of every tracked layer."""
    batch = batch.to(lm.device)
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
    # The LM head and softmax dominate small models: compute them only where tokens are predicted.
    first = _first_predicting_position(batch)
    options = {"logits_to_keep": torch.arange(first, batch.input_ids.shape[1] - 1, device=lm.device)}
    if not _accepts(type(lm.model), "logits_to_keep"):
        first, options = None, {}
    if lm.activation_checkpointing and _accepts(type(lm.model), "use_cache"):
        options["use_cache"] = False  # a recomputed block would append its keys and values to the cache again
    blocks = checkpointed_blocks(lm.model) if lm.activation_checkpointing else nullcontext()
    try:
        with blocks, _frozen_parameters(lm.model):  # frozen through the backward too, where blocks are recomputed
            with lm.autocast():
                logits = lm.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, **options).logits
            if not all_finite(logits):
                _raise_first_non_finite(outputs)
            losses = sequence_losses(logits, batch, labels, generator, first)
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
