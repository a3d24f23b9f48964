"""`pretrace ui` is stopped as a whole: SIGTERM (a supervisor) to the pretrace process leaves no
`dagster dev`, webserver, daemon, code server or report server behind. SIGINT (Ctrl-C) takes the
same path, passed on as SIGINT: tests/pipeline/test_signals.py drives both on a cheap tree."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.request

import psutil

from tests.integration.servers import wait_for
from tests.s3server import free_port


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _listens(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return False
    return True


def test_pretrace_ui_leaves_no_process_behind(tmp_path):
    port, report_port = free_port(), free_port()
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / ".dagster_home"), "PRETRACE_REPORT_PORT": str(report_port)}
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
        assert _listens(report_port)  # the report's server, beside the UI
        ui.send_signal(signal.SIGTERM)
        ui.wait(timeout=60)
        _, alive = psutil.wait_procs(started, timeout=30)
        assert not alive, [p.cmdline() for p in alive]
        assert not _answers(port) and not _listens(report_port)
    finally:
        for child in psutil.Process(ui.pid).children(recursive=True) if ui.poll() is None else []:
            child.kill()
        ui.kill()
