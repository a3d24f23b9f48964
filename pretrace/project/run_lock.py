"""One `pretrace run` at a time per storage root on this machine.

Two runs of one project would compute every artefact twice and race to commit them. The lock is
an advisory file lock in pretrace's private cache folder, keyed by the storage root, so the
storage holds only artefacts; the operating system releases it when its holder exits or dies.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager

from pretrace.errors import RunInProgress
from pretrace.store.fingerprint import cache_folder, private_folder
from pretrace.store.storage import Storage


@contextmanager
def exclusive_run(storage: Storage) -> Iterator[None]:
    """Hold the storage root's run lock, or refuse at once naming the run that holds it."""
    root = storage.url()
    folder = private_folder(cache_folder() / "locks")
    path = folder / f"{hashlib.sha256(root.encode()).hexdigest()[:16]}.lock"
    with open(path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            raise RunInProgress(
                f"another `pretrace run` ({holder}) is computing {root}; wait for it to finish (or stop it), "
                "then run again"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()}")
        lock.flush()
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
