"""Stop signals: none that reaches the CLI while Dagster holds the handlers is lost, and a
supervised process group stops whole.

Dagster's in-process run swaps SIGINT/SIGTERM for its own handler while it executes, raises at its
own checkpoints, and forgets a signal that came after the last one. The C-level wakeup fd sees
every signal whatever Python handler is installed, so `pretrace run` reads it between runs.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_wakeup: dict[str, socket.socket] = {}


def record_signals() -> None:
    """From now on every signal this process receives is noted (main thread only); what was
    noted before is forgotten."""
    if "reader" not in _wakeup:
        reader, writer = socket.socketpair()
        reader.setblocking(False)
        writer.setblocking(False)
        signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        _wakeup.update(reader=reader, writer=writer)
    _received()


def _received() -> bytes:
    """The signal numbers noted since the last read, one byte each."""
    received = b""
    try:
        while chunk := _wakeup["reader"].recv(512):
            received += chunk
    except BlockingIOError:
        pass
    return received


def raise_if_stopped() -> None:
    """Raise KeyboardInterrupt if SIGINT or SIGTERM arrived since the last call (and since
    `record_signals`), whichever handler saw it; without `record_signals`, nothing to do."""
    if "reader" not in _wakeup:
        return
    received = _received()
    if any(signum in received for signum in STOP_SIGNALS):
        raise KeyboardInterrupt


class _Stopped(Exception):
    def __init__(self, signum: int) -> None:
        self.signum = signum


def run_process_group(command: list[str], env: dict[str, str], grace_s: float = 20.0) -> int:
    """Run a command that starts children (dagster dev: webserver, daemon, code server) in its
    own process group, and on SIGINT or SIGTERM stop the whole group, not only its leader: what
    the terminal's Ctrl-C does, for a supervisor's SIGTERM too. The group has ``grace_s`` to
    exit on the signal passed on, none after a second one; then it is killed."""

    def stop(signum: int, _frame: object) -> None:
        raise _Stopped(signum)  # out of the wait below: a wait inside the handler could not reap

    # Caught before the child starts, so that it starts with the default actions: a signal this
    # process inherited as ignored (a shell's background job ignores SIGINT; Dagster's in-process
    # runs copy SIGINT's handler to SIGTERM) would otherwise be ignored by the whole group too.
    for signum in STOP_SIGNALS:
        signal.signal(signum, stop)
    try:
        process = subprocess.Popen(command, env=env, start_new_session=True)
    except _Stopped as early:
        raise SystemExit(128 + early.signum) from None
    try:
        code = process.wait()
    except _Stopped as first:
        _signal_group(process.pid, first.signum)
        try:
            process.wait(timeout=grace_s)
        except (subprocess.TimeoutExpired, _Stopped):
            pass
        _signal_group(process.pid, signal.SIGKILL)
        raise SystemExit(128 + first.signum) from None
    _signal_group(process.pid, signal.SIGTERM)  # children the leader left behind
    return code


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass
