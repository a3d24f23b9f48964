"""The committed report over HTTP, read-only, for a browser: what `pretrace report` serves, and
`pretrace ui` beside the Dagster UI, whose report metadata links here (a browser does not follow
a web page's file:// links, nor open s3:// ones).

Only the files of a committed `influence_report` artefact are served, each read through the
storage layer (a local folder or s3://) and checked against its manifest's SHA-256, and only
while the recompute policy calls the report current: a missing, damaged or stale report gets a
short page saying what to run instead. Nothing here writes. One request is answered at a time:
the content digests a Project keeps (`pretrace.store.fingerprint`) are not shared across threads.
"""

from __future__ import annotations

import html
import mimetypes
import os
import signal
import threading
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote

from pretrace.config import PretraceConfig
from pretrace.errors import ConcurrentChange, InputError, PretraceError
from pretrace.project.provenance import Project, Status
from pretrace.report.build import REPORT_PAGE

REPORT_ARTEFACT = "influence_report"
REPORT_PORT_ENV = "PRETRACE_REPORT_PORT"
DEFAULT_REPORT_PORT = 3080
"""Not Dagster's 3000, so that `pretrace ui` serves both."""
LOCALHOST = "127.0.0.1"
MODELS = "models"
"""The URL folder of compared models' reports: /models/<name>/report.html."""
HEADERS = {
    "Cache-Control": "no-store",  # the next run replaces the report under the same URL
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'",
}


def report_port(env: Mapping[str, str] = os.environ) -> int:
    """The report server's port: $PRETRACE_REPORT_PORT, else 3080. The server and the links of
    the asset's metadata both read it, so that they agree."""
    value = env.get(REPORT_PORT_ENV) or str(DEFAULT_REPORT_PORT)
    if not (value.isdigit() and 0 < int(value) < 65536):
        raise InputError(f"${REPORT_PORT_ENV}={value!r} is not a TCP port (1 to 65535)")
    return int(value)


def _folder(model: str | None) -> str:
    return "" if model is None else f"{MODELS}/{quote(model, safe='')}/"


def report_url(file: str = REPORT_PAGE, model: str | None = None, port: int | None = None) -> str:
    """Where the report server serves one file of a model's report (the main model's for None)."""
    return f"http://{LOCALHOST}:{port or report_port()}/{_folder(model)}{quote(file)}"


@dataclass(frozen=True)
class Response:
    status: HTTPStatus
    body: bytes
    content_type: str = "text/html; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


def _page(status: HTTPStatus, title: str, message: str) -> Response:
    """A short HTML page that says why there is no file to show, and what to do."""
    text = f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
    text += f"<body><h1>{html.escape(title)}</h1><p>{html.escape(message)}</p></body></html>"
    return Response(status, text.encode())


def _route(path: str) -> tuple[str | None, str]:
    """(compared model or None, file of its report) of a URL path."""
    path = path.removeprefix("/")
    if not path.startswith(f"{MODELS}/"):
        return None, path
    model, _, file = path.removeprefix(f"{MODELS}/").partition("/")
    return model, file


def _content_type(file: str) -> str:
    kind = mimetypes.guess_type(file)[0] or "application/octet-stream"
    return f"{kind}; charset=utf-8" if kind.startswith("text/") else kind


class ReportSite:
    """What the server answers for a path: a file of the committed, current report, or why not.
    Each request reads storage afresh (a new Project), so a finished run shows at the next reload."""

    def __init__(self, config: PretraceConfig, demo: bool = False, rerun: str = "pretrace run") -> None:
        self.config, self.demo = config, demo
        self.rerun = rerun  # the command that computes the report, named on pages that have none to show
        self._lock = threading.Lock()

    def answer(self, target: str) -> Response:
        """The response to a GET of ``target`` (a request's path); never raises."""
        model, file = _route(unquote(target.partition("?")[0]))
        if model is not None and model not in self.config.compare_models:
            return _page(HTTPStatus.NOT_FOUND, "No such model", f"{model!r} is not one of `compare_models`.")
        if not file:
            return Response(HTTPStatus.FOUND, b"", headers={"Location": f"/{_folder(model)}{REPORT_PAGE}"})
        try:
            with self._lock:
                return self._file(Project(self.config, demo=self.demo).compared(model), file)
        except Exception as exc:  # a page, never a traceback
            return self._failure(exc)

    def _file(self, project: Project, file: str) -> Response:
        status = project.status(REPORT_ARTEFACT)
        if not status.current:
            return self._not_current(status)
        artefact = project.graph[REPORT_ARTEFACT]
        manifest = project.manifest(artefact)
        if file not in manifest.files:  # the manifest lists every file of the report, and only those
            return _page(HTTPStatus.NOT_FOUND, "Not a file of the report", f"The report has no file {file!r}.")
        with project.store.reader(artefact, manifest).path(file) as path:
            return Response(HTTPStatus.OK, Path(path).read_bytes(), _content_type(file))

    def _not_current(self, status: Status) -> Response:
        missing = status.state == "missing"
        return _page(
            HTTPStatus.NOT_FOUND if missing else HTTPStatus.CONFLICT,
            "No report" if missing else "The report is out of date",
            f"{REPORT_ARTEFACT} is {status.state}: {status.reason}. Run `{self.rerun}`, then reload this page.",
        )

    def _failure(self, exc: Exception) -> Response:
        if isinstance(exc, ConcurrentChange):
            return _page(HTTPStatus.CONFLICT, "The report changed while it was read", f"{exc}. Reload this page.")
        if isinstance(exc, PretraceError):
            return _page(HTTPStatus.CONFLICT, "The report cannot be read", f"{exc}. Then run `{self.rerun}`.")
        if isinstance(exc, OSError):
            return _page(HTTPStatus.SERVICE_UNAVAILABLE, "The storage cannot be read", f"{exc}.")
        traceback.print_exc()
        return _page(HTTPStatus.INTERNAL_SERVER_ERROR, "Unexpected error", f"{type(exc).__name__}: {exc} (a bug).")


class _Handler(BaseHTTPRequestHandler):
    """GET and HEAD only: any other method is answered 501 by the base class."""

    server: ReportServer
    timeout = 60  # seconds a connection may wait to send its request (a browser's spare one never does)

    def do_GET(self) -> None:
        self._reply(with_body=True)

    def do_HEAD(self) -> None:
        self._reply(with_body=False)

    def _reply(self, with_body: bool) -> None:
        response = self.server.site.answer(self.path)
        self.send_response(response.status)
        headers = {**HEADERS, "Content-Type": response.content_type, "Content-Length": str(len(response.body))}
        for name, value in {**headers, **response.headers}.items():
            self.send_header(name, value)
        self.end_headers()
        if with_body:
            self.wfile.write(response.body)


class ReportServer(ThreadingHTTPServer):
    """An HTTP server of one ReportSite. Threads only accept connections (a browser may open one
    it never sends on); the site answers one request at a time."""

    daemon_threads = True

    def __init__(self, site: ReportSite, host: str, port: int) -> None:
        self.site = site
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        """The report page's address on this server (its bound port, also when asked for port 0)."""
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/{REPORT_PAGE}"


def serve_report(site: ReportSite, host: str = LOCALHOST, port: int | None = None) -> ReportServer:
    """A server of ``site`` bound to ``host`` and ``port`` (default: `report_port`), not yet serving."""
    port = report_port() if port is None else port
    try:
        return ReportServer(site, host, port)
    except OSError as exc:
        raise InputError(
            f"cannot serve the report on {host}:{port} ({exc.strerror or exc}); "
            f"set ${REPORT_PORT_ENV} to another port (or pass `pretrace report --port`)"
        ) from None


def _serve_without_signals(server: ReportServer) -> None:
    """Serve with SIGINT and SIGTERM blocked in this thread and those it starts, so the kernel
    delivers them to the main thread: one delivered here would leave a main thread blocked in a
    system call (waiting for `dagster dev`) unaware of it."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    server.serve_forever()


@contextmanager
def in_background(server: ReportServer) -> Iterator[ReportServer]:
    """``server`` serving from a thread while the block runs; stopped and closed after it."""
    thread = threading.Thread(target=_serve_without_signals, args=(server,), name="pretrace-report", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
