"""A stop signal that another handler swallowed (as Dagster's in-process run does after its last
check) still stops `pretrace run` between runs."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading

import psutil
import pytest

from pipeline.signals import raise_if_stopped, record_signals
from tests.integration.servers import wait_for


def deliver(signum: int) -> None:
    """To this thread: its C handler has noted it before the call returns (os.kill may hand it to
    another of pytest's threads, which notes it a moment later)."""
    signal.pthread_kill(threading.get_ident(), signum)


@pytest.fixture
def swallowing_handlers():
    """SIGINT and SIGTERM taken by a handler that only notes them, restored afterwards."""
    seen: list[int] = []
    saved = {s: signal.signal(s, lambda signum, _frame: seen.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield seen
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_another_handler_took_is_raised_once(swallowing_handlers, signum):
    record_signals()
    raise_if_stopped()  # nothing yet
    deliver(signum)
    assert swallowing_handlers == [signum]  # the other handler ran and did not raise
    with pytest.raises(KeyboardInterrupt):
        raise_if_stopped()
    raise_if_stopped()  # read once: the next run is not stopped by the same signal


def test_other_signals_and_earlier_ones_do_not_stop(swallowing_handlers):
    record_signals()
    deliver(signal.SIGTERM)
    record_signals()  # a new command forgets what came before it
    saved = signal.signal(signal.SIGUSR1, lambda *_: None)
    try:
        deliver(signal.SIGUSR1)
    finally:
        signal.signal(signal.SIGUSR1, saved)
    raise_if_stopped()


SUPERVISE_A_TREE = """
import os, signal, sys
from pipeline.signals import run_process_group
for ignored in (signal.SIGINT, signal.SIGTERM):  # as a background job inherits SIGINT, or after Dagster
    signal.signal(ignored, signal.SIG_IGN)
tree = [sys.executable, "-c", (
    "import subprocess, sys, time\\n"
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\\n"
    "time.sleep(600)"
)]
sys.exit(run_process_group(tree, dict(os.environ), grace_s=600))
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_supervised_process_group_stops_whole_on_either_signal(signum):
    """What `pretrace ui` does with `dagster dev` and its children (the real one is driven by
    tests/integration/test_ui_processes.py), on a tree of two sleeping Pythons started by a
    process that ignored both signals: stopped as soon as they exit, not after the grace period
    (600 s here)."""
    supervisor = subprocess.Popen([sys.executable, "-c", SUPERVISE_A_TREE])
    try:
        wait_for(lambda: len(psutil.Process(supervisor.pid).children(recursive=True)) == 2, 60, "the tree to start")
        tree = psutil.Process(supervisor.pid).children(recursive=True)
        supervisor.send_signal(signum)
        assert supervisor.wait(timeout=60) == 128 + signum
        _, alive = psutil.wait_procs(tree, timeout=30)
        assert not alive, [p.cmdline() for p in alive]
    finally:
        for child in psutil.Process(supervisor.pid).children(recursive=True) if supervisor.poll() is None else []:
            child.kill()
        supervisor.kill()
