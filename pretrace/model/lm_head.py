"""A causal LM split at its LM head: the body that makes the final hidden states, and the head as
a function of them, so a loss can be computed a few positions at a time instead of holding
(tokens x vocabulary) logits at once (Command-R-35B: 8.4 GB of float32 logits at 2048 tokens).

The head is the output embedding followed by what a family applies after it: Cohere's
``logit_scale``, Granite's ``logits_scaling``, Gemma's ``final_logit_softcapping``. Whatever
the family, the split is checked once per model on a short probe: head(body(x)) must equal the
model's own logits, otherwise (a family that transforms its logits in some other way) there is
no split and the caller computes every logit at once, as the model does.

Where the output embedding is a plain ``nn.Linear``, the head's gradient is known in closed form
(`SplitModel.linear_head_weight`, `SplitModel.after_head_backward`): a loss can then hand back
its hidden states' gradient without autograd recomputing the head.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

PROBE_TOLERANCE = 1e-4
"""Largest difference between the split's logits and the model's, relative to their largest
magnitude: the same operations give the same numbers, a missing scale or cap differs by O(1)."""


@dataclass(frozen=True)
class SplitModel:
    """``body(input_ids=..., attention_mask=...)`` gives the final hidden states (after the final
    norm) as its first output; ``head(hidden)`` their logits, exactly as the model computes them."""

    body: nn.Module
    output_embeddings: nn.Module
    after_head: Callable[[torch.Tensor], torch.Tensor]
    after_head_backward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.after_head(self.output_embeddings(hidden))

    @property
    def linear_head_weight(self) -> torch.Tensor | None:
        """The output embedding's (vocab, hidden) weight where the head is exactly
        ``after_head(hidden @ weight.T + bias)``; None for any other module (a quantized or
        adapted head), whose gradient only autograd knows."""
        module = self.output_embeddings
        if type(module) is nn.Linear and module.weight.dtype.is_floating_point:
            return module.weight
        return None

    def hidden_states(self, **inputs) -> torch.Tensor:
        return self.body(**inputs)[0]


_SPLITS: weakref.WeakKeyDictionary[nn.Module, SplitModel | None] = weakref.WeakKeyDictionary()


def split_at_head(model: nn.Module) -> SplitModel | None:
    """The model's body and head, or None where head(body(x)) does not reproduce its logits
    (checked once per model)."""
    if model not in _SPLITS:
        _SPLITS[model] = _checked(_split(model), model)
    return _SPLITS[model]


def _split(model: nn.Module) -> SplitModel | None:
    body = getattr(model, "base_model", model)
    output_embeddings = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if body is model or output_embeddings is None:
        return None
    return SplitModel(body, output_embeddings, *_after_head(model))


def _after_head(
    model: nn.Module,
) -> tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    """What the family applies to the output embedding's product, and its backward:
    ``backward(product, grad)`` turns the gradient with respect to the logits (``after``'s output)
    into the gradient with respect to the product, overwriting ``grad``."""
    config = getattr(model, "config", None)
    scale = getattr(model, "logit_scale", None)  # Cohere: logits * logit_scale
    divisor = getattr(config, "logits_scaling", None)  # Granite: logits / logits_scaling
    cap = getattr(config, "final_logit_softcapping", None)  # Gemma 2 and 3: cap * tanh(logits / cap)
    scale = scale if isinstance(scale, (int, float)) else None
    divisor = divisor if isinstance(divisor, (int, float)) else None
    cap = cap if isinstance(cap, (int, float)) else None

    def scaled(logits: torch.Tensor) -> torch.Tensor:
        if scale is not None:
            logits = logits * scale
        if divisor is not None:
            logits = logits / divisor
        return logits

    def after(logits: torch.Tensor) -> torch.Tensor:
        logits = scaled(logits)
        return torch.tanh(logits / cap) * cap if cap is not None else logits

    def backward(product: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        if cap is not None:  # d(cap tanh(x / cap))/dx = 1 - tanh(x / cap)^2, tanh recomputed as autograd keeps it
            grad.mul_(1 - torch.tanh(scaled(product) / cap).square_())
        if divisor is not None:
            grad.div_(divisor)
        if scale is not None:
            grad.mul_(scale)
        return grad

    return after, backward


def _checked(split: SplitModel | None, model: nn.Module) -> SplitModel | None:
    if split is None:
        return None
    vocab = model.get_input_embeddings().num_embeddings
    device = next(model.parameters()).device
    probe = torch.tensor([[1 % vocab, 2 % vocab, 3 % vocab, 4 % vocab]], device=device)
    with torch.no_grad():
        expected = model(input_ids=probe).logits.double()
        got = split.head(split.hidden_states(input_ids=probe)).double()
    if got.shape != expected.shape:
        return None
    return split if (got - expected).abs().max() <= PROBE_TOLERANCE * expected.abs().max() else None
