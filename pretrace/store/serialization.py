"""Tensor states as (safetensors tensors, string metadata): the only stored form, never pickle."""

from __future__ import annotations

import json

import torch

from pretrace.errors import InputError


def pack(tensors: dict[str, torch.Tensor], kind: str, **meta) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Contiguous tensors plus a JSON metadata entry recording what the state is."""
    return {k: v.contiguous() for k, v in tensors.items()}, {"pretrace": json.dumps({"kind": kind, **meta})}


def unpack(metadata: dict[str, str] | None, kind: str) -> dict:
    """The metadata written by `pack`, checked to describe a state of `kind`."""
    try:
        meta = json.loads((metadata or {})["pretrace"])
    except (KeyError, json.JSONDecodeError):
        raise InputError(f"expected a stored {kind} written by pretrace; this file has no pretrace metadata") from None
    if meta.get("kind") != kind:
        raise InputError(f"expected a stored {kind}, found {meta.get('kind')!r}")
    return meta
