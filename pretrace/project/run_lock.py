"""One `pretrace run` at a time per storage root on this machine.

Two runs of one project would compute every artefact twice and race to commit them; two projects
on one root would overwrite each other's artefacts. The lock is an advisory file lock in
pretrace's private cache folder, keyed by the storage root, so the storage holds only artefacts;
the operating system releases it when its holder exits or dies. The lock file names its holder
(process and inputs), so the run that is refused can say which of the two cases it is.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager

from pretrace.config import PretraceConfig
from pretrace.errors import RunInProgress
from pretrace.store.fingerprint import cache_folder, private_folder
from pretrace.store.storage import Storage


def project_inputs(config: PretraceConfig) -> str:
    """What makes a project another one: its model, corpus and queries."""
    return f"model {config.model}, corpus {config.corpus}, queries {config.queries}"


def _refusal(root: str, holder: dict, inputs: str) -> str:
    pid = holder.get("pid", "?")
    if holder.get("inputs", inputs) == inputs:
        return f"another `pretrace run` (pid {pid}) is computing {root}; wait for it to finish (or stop it), then run again"
    return (
        f"another project ({holder['inputs']}; pid {pid}) is computing {root}: two projects cannot share a "
        "storage root; give this one its own `storage`"
    )


@contextmanager
def exclusive_run(storage: Storage, inputs: str) -> Iterator[None]:
    """Hold the storage root's run lock for the project of ``inputs`` (`project_inputs`), or
    refuse at once naming the run that holds it and whether it is this project's."""
    root = storage.url()
    folder = private_folder(cache_folder() / "locks")
    path = folder / f"{hashlib.sha256(root.encode()).hexdigest()[:16]}.lock"
    with open(path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            try:
                holder = json.loads(lock.read())
            except ValueError:  # the holder has not written its name yet
                holder = {}
            raise RunInProgress(_refusal(root, holder if isinstance(holder, dict) else {}, inputs)) from None
        lock.seek(0)
        lock.truncate()
        lock.write(json.dumps({"pid": os.getpid(), "inputs": inputs}))
        lock.flush()
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
