"""The hardware a study is planned for, named on the command line: not the machine that plans it.

`--gpu h100-80gb`, `--gpu h200-141gb` (a card: its memory, and its name for picking measured
rates) or a size (`--gpu 80GB`: any card with that much memory); `--gpus N` GPUs sharing the
work; `--host-memory` and `--disk` budgets (`512GB`, `2TiB`, or a number of GB).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pretrace.errors import InputError

CARDS = {"h100-80gb": (80e9, "H100"), "h200-141gb": (141e9, "H200")}
"""Named cards: device memory in bytes (as sold: 80 GB, not the 85.5 reported by the driver, for
headroom) and the name their bench result files carry (`measured_rates`)."""

DEFAULT_DISK = 1e15
"""Disk a study is checked against when `--disk` is not given: a petabyte, more than any study
plausibly has, so that only stores that cannot exist (an unprojected 7B store is exabytes) are refused."""

_UNITS = {"": 1e9, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12, "pb": 1e15}
_UNITS |= {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "pib": 2**50}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str, what: str) -> int:
    """Bytes of ``text`` ("80GB", "1.5TB", "512GiB"; a bare number is GB); `InputError` naming ``what``."""
    match = _SIZE.match(text)
    unit = match and match.group(2).lower()
    if not match or unit not in _UNITS or float(match.group(1)) <= 0:
        raise InputError(f"{what}: {text!r} is not a size; give e.g. 80GB, 1.5TB or 512GiB (a bare number is GB)")
    return int(float(match.group(1)) * _UNITS[unit])


@dataclass(frozen=True)
class Target:
    """Budgets a plan must fit: each step's device and host memory, and the study's disk."""

    name: str
    device_bytes: int
    card: str | None  # the card's name in bench result files; None for a bare size
    gpus: int = 1
    host_bytes: int | None = None  # per step (a pod); None: printed, not checked
    disk_bytes: int = int(DEFAULT_DISK)

    def describe(self) -> str:
        host = (
            "host memory unchecked" if self.host_bytes is None else f"{self.host_bytes / 1e9:.4g} GB host memory a step"
        )
        return (
            f"{self.gpus} x {self.name} ({self.device_bytes / 1e9:.4g} GB a GPU), {host}, "
            f"{self.disk_bytes / 1e12:.4g} TB disk"
        )


def target(gpu: str, gpus: int = 1, host_memory: str | None = None, disk: str | None = None) -> Target:
    """The `Target` of the command line's --gpu, --gpus, --host-memory and --disk."""
    if gpus < 1:
        raise InputError(f"--gpus: {gpus} is not a number of GPUs; give 1 or more")
    named = CARDS.get(gpu.lower())
    if named is None and not _SIZE.match(gpu):
        raise InputError(f"--gpu: {gpu!r} is neither a card ({', '.join(CARDS)}) nor a size such as 80GB")
    device, card = named or (parse_size(gpu, "--gpu"), None)
    return Target(
        name=gpu.lower() if named else f"{device / 1e9:.4g} GB GPU",
        device_bytes=int(device),
        card=card,
        gpus=gpus,
        host_bytes=None if host_memory is None else parse_size(host_memory, "--host-memory"),
        disk_bytes=int(DEFAULT_DISK) if disk is None else parse_size(disk, "--disk"),
    )
