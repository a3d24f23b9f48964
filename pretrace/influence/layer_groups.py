"""Tracked layers split into groups that each fit in device memory.

EK-FAC treats layers independently: each layer's covariances, eigenbasis, eigenvalue correction,
preconditioned query gradient and score term depend on that layer alone. So a model too large
to hold every tracked layer's factors at once is fitted and scored one group of layers at a
time (one pass over the data per group) with the same result. Groups are consecutive layers
of about equal factor size, so each group's peak is about the same.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import fields
from itertools import accumulate
from typing import TypeVar

from pretrace.errors import InputError
from pretrace.model.adapter import LoadedModel

State = TypeVar("State")


def factor_floats(d_out: int, d_in: int) -> int:
    """Floats in one layer's EK-FAC factors: two eigenbases and the corrected eigenvalues."""
    return d_in * d_in + d_out * d_out + d_out * d_in


def split_layers(shapes: dict[str, tuple[int, int]], groups: int) -> list[list[str]]:
    """``groups`` runs of consecutive layers whose factor sizes are about equal: each cut falls
    where the running size is nearest an equal share, leaving every group at least one layer."""
    names = list(shapes)
    if groups < 1 or groups > len(names):
        raise InputError(f"layer_groups: must be between 1 and the {len(names)} tracked layers, got {groups}")
    running = list(accumulate((factor_floats(*shapes[name]) for name in names), initial=0))
    cuts = [0]
    for k in range(1, groups):
        share = running[-1] * k / groups
        room = range(cuts[-1] + 1, len(names) - (groups - k) + 1)
        cuts.append(min(room, key=lambda cut: abs(running[cut] - share)))
    cuts.append(len(names))
    return [names[a:b] for a, b in zip(cuts, cuts[1:])]


def join_layers(parts: Sequence[dict]) -> dict:
    """One {layer: value} mapping from those of disjoint layer groups."""
    joined: dict = {}
    for part in parts:
        overlap = joined.keys() & part.keys()
        if overlap:
            raise InputError(f"layer groups overlap in {sorted(overlap)}; each tracked layer belongs to one group")
        joined |= part
    return joined


def join_mappings(cls: type[State], groups: Sequence[State]) -> State:
    """One ``cls`` of every layer from those of disjoint layer groups, for a state whose fields
    are all {layer: value} mappings (an eigenbasis, factors)."""
    return cls(*(join_layers([getattr(g, f.name) for g in groups]) for f in fields(cls)))


def layer_groups(lm: LoadedModel, groups: int) -> list[LoadedModel]:
    """The model restricted to each group of its tracked layers in turn."""
    return [lm.restricted(names) for names in split_layers(lm.layer_shapes(), groups)]


def by_layer_group(
    lm: LoadedModel, groups: int, step: Callable[[LoadedModel], State], join: Callable[[Sequence[State]], State]
) -> State:
    """Run ``step`` once per layer group and join the per-group results (one state)."""
    if groups == 1:
        return step(lm)
    return join([step(group) for group in layer_groups(lm, groups)])
