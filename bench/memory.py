"""Peak memory of the current process, for benchmarks that measure each step in a fresh child process."""

from __future__ import annotations

import resource


def hwm_bytes() -> int:
    """This process's peak RSS (VmHWM). Not ru_maxrss: Linux carries the parent's RSS at fork
    into a child's ru_maxrss across exec, so a child started by a big parent reports the
    parent's size (measured here: 2.6 GB for a child whose own peak was 1 GB)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # not Linux: KiB on Linux, bytes on macOS
