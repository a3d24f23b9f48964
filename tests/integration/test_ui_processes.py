"""`pretrace ui` is stopped as a whole: SIGTERM (a supervisor) or SIGINT (Ctrl-C) to the
pretrace process leaves no `dagster dev`, webserver, daemon or code server behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request

import psutil
import pytest

from tests.integration.servers import wait_for
from tests.s3server import free_port


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_pretrace_ui_leaves_no_process_behind(tmp_path, signum):
    port = free_port()
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / ".dagster_home")}
    ui = subprocess.Popen(
        [sys.executable, "-m", "pretrace.pipeline.cli", "ui", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: _answers(port), 180, "the web UI to answer", every=1)
        started = psutil.Process(ui.pid).children(recursive=True)
        assert len(started) >= 3, [p.cmdline() for p in started]  # dagster dev, webserver, daemon (+ code servers)
        ui.send_signal(signum)
        ui.wait(timeout=60)
        _, alive = psutil.wait_procs(started, timeout=30)
        assert not alive, [p.cmdline() for p in alive]
        assert not _answers(port)
    finally:
        for child in psutil.Process(ui.pid).children(recursive=True) if ui.poll() is None else []:
            child.kill()
        ui.kill()
