"""Data parallel inside one job on torch.distributed: one process per GPU (``torchrun
--nproc-per-node N``; the gloo backend on CPUs), each on its share of whole batches.

Fitting sums are additive, so each rank sums over its batches and the sums are all-reduced on
the device before they are normalised. Document gradients are per document, so each rank takes
a contiguous block of whole batches and rank 0 gathers the blocks in document order. A rank
forms exactly the batches the single process forms (same documents, same padding, the same
`batch_generator` seed for sampled labels), so results equal one process's to float rounding.
Without a process group, `Ranks()` is the single process and every call here is a no-op.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

import torch
import torch.distributed as dist

from pretrace import errors
from pretrace.errors import InputError, PretraceError

T = TypeVar("T")
GPUS_PER_STEP = "gpus_per_step"
ERROR_PREFIX, RESULT_PREFIX = "pretrace-error: ", "pretrace-result: "
"""How ranks report to the process that launched torchrun, one line each: a pretrace error, and
the writing rank's description of what it wrote (JSON)."""


@dataclass(frozen=True)
class Ranks:
    """This process's place in a data-parallel job: rank ``rank`` of ``world`` processes."""

    rank: int = 0
    world: int = 1
    _host_group: object = field(default=None, compare=False, repr=False)

    @classmethod
    def current(cls) -> Ranks:
        """The running process group's ranks, or the single process when there is none."""
        if not (dist.is_available() and dist.is_initialized()):
            return cls()
        # Gathered documents travel between host memories: over gloo, whatever the device backend.
        host = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
        return cls(dist.get_rank(), dist.get_world_size(), host)

    @property
    def single(self) -> bool:
        return self.world == 1

    @property
    def writes(self) -> bool:
        """Whether this rank writes the results (rank 0: results are written once)."""
        return self.rank == 0

    def strided(self, items: Iterable[T]) -> Iterator[T]:
        """Every ``world``-th item from the ``rank``-th: this rank's share of a stream of whole batches."""
        return itertools.islice(items, self.rank, None, self.world)

    def block(self, count: int, batch_size: int) -> range:
        """This rank's contiguous block of ``count`` documents, cut at batch boundaries so its
        batches are the single process's; lower ranks take the extra batches (rank 0 is never
        empty while there is a document)."""
        share, extra = divmod(-(-count // batch_size), self.world)
        start, stop = (r * share + min(r, extra) for r in (self.rank, self.rank + 1))
        return range(min(start * batch_size, count), min(stop * batch_size, count))

    def sum_(self, tensors: Iterable[torch.Tensor]) -> None:
        """Replace each tensor (on the device) by its sum over the ranks, in place."""
        if not self.single:
            for tensor in tensors:
                dist.all_reduce(tensor, op=dist.ReduceOp.SUM)

    def sum_counts(self, counts: Sequence[int], device: torch.device) -> list[int]:
        """Integer counts summed over the ranks."""
        if self.single:
            return list(counts)
        total = torch.tensor(list(counts), dtype=torch.int64, device=device)
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return [int(c) for c in total.tolist()]

    def gather_rows(self, parts: dict[str, torch.Tensor], counts: Sequence[int]) -> dict[str, torch.Tensor] | None:
        """Rank 0's concatenation, in rank order, of every rank's host tensors whose first
        dimension has ``counts[r]`` rows on rank r (the same keys, trailing shapes and dtypes on
        every rank that has rows); None on the other ranks."""
        if self.single:
            return parts
        keys = sorted(parts)
        if not self.writes:
            for key in keys if counts[self.rank] else ():
                dist.send(parts[key].contiguous(), dst=0, group=self._host_group)
            return None
        gathered = {key: [parts[key]] for key in keys}
        for source in range(1, self.world):
            for key in keys if counts[source] else ():
                like = parts[key]
                received = torch.empty((counts[source], *like.shape[1:]), dtype=like.dtype)
                dist.recv(received, src=source, group=self._host_group)
                gathered[key].append(received)
        return {key: torch.cat(pieces) for key, pieces in gathered.items()}

    def barrier(self) -> None:
        """Wait for every rank (the others wait while rank 0 writes)."""
        if not self.single:
            dist.barrier(group=self._host_group)


SINGLE = Ranks()
"""The single process: no process group, every call above a no-op."""


def visible_devices() -> int:
    """GPUs this process can use (0 on a machine without CUDA)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_gpus_per_step(gpus: int, device: str) -> None:
    """Refuse ``gpus_per_step`` GPUs on a machine that has fewer; on a CPU (``device: cpu``)
    the processes use gloo, so any count runs (for tests and debugging)."""
    if gpus > 1 and device != "cpu" and visible_devices() < gpus:
        raise InputError(
            f"{GPUS_PER_STEP}: {gpus} GPUs asked for a step but this machine has {visible_devices()}; "
            f"lower {GPUS_PER_STEP} or run the step where that many GPUs are visible"
        )


@contextmanager
def process_group(device: str) -> Iterator[Ranks]:
    """Join the torchrun job this process belongs to (NCCL on GPUs with each rank on its local
    GPU, gloo on CPUs) and leave it afterwards; the single process outside torchrun."""
    if "RANK" not in os.environ:
        yield Ranks()
        return
    cuda = device != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    try:
        yield Ranks.current()
    finally:
        dist.destroy_process_group()


def error_line(error: PretraceError) -> str:
    """The line a failing rank prints, for `run_torchrun` to raise the same error in the launcher."""
    return ERROR_PREFIX + json.dumps({"type": type(error).__name__, "message": str(error)})


def result_line(description: dict) -> str:
    """The line the writing rank prints: what `run_torchrun` returns."""
    return RESULT_PREFIX + json.dumps(description)


def _raised(line: str) -> PretraceError:
    reported = json.loads(line.removeprefix(ERROR_PREFIX))
    kind = getattr(errors, reported["type"], PretraceError)
    return (kind if isinstance(kind, type) and issubclass(kind, PretraceError) else PretraceError)(reported["message"])


def run_torchrun(module: str, arguments: Sequence[str], processes: int, log: Callable[[str], None]) -> dict:
    """Run ``python -m module *arguments`` under torchrun, ``processes`` processes on this machine,
    and wait: each output line goes to ``log``, a failure is raised here as the error a rank
    reported (`error_line`: an InputError stays an InputError) or with torchrun's last line, and
    success returns the writing rank's description (`result_line`; empty without one)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    reported: str | None = None
    result: dict = {}
    last: deque[str] = deque(maxlen=1)
    with subprocess.Popen(
        [*command, "-m", module, *arguments], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as child:
        try:
            for line in child.stdout:
                line = line.rstrip("\n")
                if line.startswith(ERROR_PREFIX):
                    reported = reported or line
                elif line.startswith(RESULT_PREFIX):
                    result = json.loads(line.removeprefix(RESULT_PREFIX))
                elif line.strip():
                    last.append(line)
                    log(line)
        except BaseException:  # the launcher was stopped: stop the ranks too
            child.terminate()
            raise
    if child.returncode != 0:
        if reported is not None:
            raise _raised(reported)
        raise PretraceError(
            f"torchrun ({GPUS_PER_STEP}: {processes}) of {module} exited with status {child.returncode}: "
            + (last[0] if last else "no output")
        )
    return result
