"""Activation checkpointing of a captured pass: each transformer block keeps only its input, and
its inner activations are recomputed when the backward pass reaches it.

A 35B model's bf16 weights take 70 of an 80 GB GPU's memory; the activations a forward pass
keeps for its backward take another 7.7 GB at 512 tokens, which is what stops it fitting. Kept
per block instead: one hidden state per token and block (0.3 GB), and one block's activations at
a time while it is recomputed. The captured values are the same numbers: the model runs in eval
mode, so the recomputation repeats the forward exactly (tested byte for byte on a CPU). Hooks
inside a block see its forward twice; the second time they record the same tensors again.

Hugging Face's own `gradient_checkpointing_enable` acts only in training mode, where dropout
would change what is captured, so the blocks' forwards are wrapped here for the pass alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn
from torch.utils.checkpoint import checkpoint

from pretrace.errors import InputError


def transformer_blocks(model: nn.Module) -> nn.ModuleList:
    """The model's stack of blocks: its module list holding the most parameters (`model.layers`
    of Llama-likes, `transformer.h` of GPT-2, `gpt_neox.layers`, ...)."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if not lists:
        raise InputError(
            f"{type(model).__name__} has no list of transformer blocks to checkpoint; "
            "set activation_checkpointing: false"
        )
    return max(lists, key=lambda blocks: sum(p.numel() for p in blocks.parameters()))


def _checkpointed(forward):
    def run(*args, **kwargs):
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    return run


@contextmanager
def checkpointed_blocks(model: nn.Module) -> Iterator[None]:
    """Within the block, every transformer block of ``model`` runs checkpointed (its forward
    wrapped on the instance, removed again on exit, however the block ends)."""
    blocks = list(transformer_blocks(model))
    for block in blocks:
        block.forward = _checkpointed(block.forward)
    try:
        yield
    finally:
        for block in blocks:
            del block.forward
