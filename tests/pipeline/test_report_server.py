"""The report a browser opens from the Dagster UI: the report's metadata links the files of the
committed artefact on the report server (no base64 in the event log), and that server
(`pretrace report`) serves those files, as stored and verified, and nothing else."""

import hashlib
import http.client
import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import pytest

from pretrace.config import load_config
from pretrace.errors import InputError
from pretrace.report.sections import FIGURES
from pretrace.report.serve import REPORT_PORT_ENV, ReportSite, in_background, serve_report
from pretrace.testing.project import make_project, run_pipeline
from tests.integration.browser import chromium_page, needs_chromium
from tests.s3server import free_port, upload

METADATA_PORT = 3999  # the fixture's $PRETRACE_REPORT_PORT, which the metadata's links name
RERUN = "pretrace run --config the.yaml"  # what the server's pages tell the user to run


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A tiny project run once into an instance kept to read the report's metadata: its config,
    the config's path, that metadata and the report's stored manifest."""
    path = make_project(tmp_path_factory.mktemp("report"))
    config = load_config(path)
    instance = dg.DagsterInstance.ephemeral()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(REPORT_PORT_ENV, str(METADATA_PORT))
        run_pipeline(config, instance)
    event = instance.get_latest_materialization_event(dg.AssetKey("influence_report"))
    manifest = json.loads(Path(config.storage, "influence_report", "manifest.json").read_text())
    return SimpleNamespace(config=config, path=path, metadata=event.asset_materialization.metadata, manifest=manifest)


@pytest.fixture(scope="module")
def server(finished):
    with in_background(serve_report(ReportSite(finished.config, rerun=RERUN), port=0)) as server:
        yield server


def stored(config, file: str) -> bytes:
    return Path(config.storage, "influence_report", file).read_bytes()


def get(server, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one request, the path sent as written (no normalization)."""
    host, port = server.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=30)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def test_the_metadata_links_the_stored_figures_and_holds_no_base64(finished):
    config, metadata, manifest = finished.config, finished.metadata, finished.manifest
    serialized = dg.serialize_value(metadata)
    assert "data:image" not in serialized and "base64" not in serialized
    # measured: 25 KB serialized as the event log stores it; 330 KB with the five base64 plots of before
    assert len(serialized) < 40_000, len(serialized)
    served = f"http://127.0.0.1:{METADATA_PORT}/"
    assert metadata["report"] == dg.MetadataValue.url(f"{served}report.html")
    assert metadata["report_path"] == dg.MetadataValue.path(f"{config.storage}/influence_report/report.html")
    plots = {key: value for key, value in metadata.items() if key.startswith("plot_")}
    assert sorted(plots) == sorted(f"plot_{name}" for name in FIGURES)
    for key, link in plots.items():
        assert isinstance(link, dg.UrlMetadataValue) and link.url.startswith(served), key
        file = link.url.removeprefix(served)
        assert file == f"figures/{key.removeprefix('plot_')}.png"
        assert manifest["files"][file]["sha256"] == hashlib.sha256(stored(config, file)).hexdigest()


def test_the_server_serves_each_file_of_the_report_as_stored(finished, server):
    config, manifest = finished.config, finished.manifest
    for file in ["report.html", "figures/correlation_matrix.png", "top_documents.parquet"]:
        assert file in manifest["files"]
        status, headers, body = get(server, f"/{file}")
        assert (status, body) == (200, stored(config, file)), file
        assert headers["Cache-Control"] == "no-store" and "default-src 'none'" in headers["Content-Security-Policy"]
    assert get(server, "/report.html?v=2")[1]["Content-Type"] == "text/html; charset=utf-8"
    assert get(server, "/figures/magnitude.png")[1]["Content-Type"] == "image/png"
    with urllib.request.urlopen(f"http://127.0.0.1:{server.server_address[1]}/", timeout=30) as response:
        assert response.url.endswith("/report.html") and response.read() == stored(config, "report.html")


@pytest.mark.parametrize(
    "path",
    [
        "/manifest.json",  # beside the report's files, not one of them
        "/../influence_report/report.html",
        "/%2e%2e/corpus_shards/part-a.jsonl.parquet",
        "/figures/../report.html",
        "/influence_scores/part-a.jsonl.parquet",  # another artefact
        "/figures/",
        "/models/nobody/report.html",  # no such compared model
        "//[",
    ],
)
def test_nothing_outside_the_reports_files_is_served(server, path):
    status, _, body = get(server, path)
    assert status == 404 and b"Traceback" not in body


def test_the_server_is_read_only(server):
    assert get(server, "/report.html", method="PUT")[0] == 501
    assert get(server, "/report.html", method="DELETE")[0] == 501


def test_the_server_binds_this_machine_only_by_default(finished, monkeypatch):
    config = finished.config
    port = free_port()
    monkeypatch.setenv(REPORT_PORT_ENV, str(port))
    with serve_report(ReportSite(config)) as server:
        assert server.server_address == ("127.0.0.1", port)
        with pytest.raises(InputError, match="cannot serve the report"):
            serve_report(ReportSite(config))  # the port is taken


def test_a_damaged_missing_or_stale_report_is_refused_with_what_to_run(finished, server):
    config = finished.config
    page = Path(config.storage, "influence_report", "report.html")
    intact = page.read_bytes()
    page.write_bytes(intact.replace(b"<h1>", b"<h2>", 1))  # as long, other bytes
    try:
        status, _, body = get(server, "/report.html")
        assert status == 404 and b"damaged" in body and RERUN.encode() in body
        assert get(server, "/figures/magnitude.png")[0] == 404  # no file of a damaged report
    finally:
        page.write_bytes(intact)
    manifest = Path(config.storage, "influence_report", "manifest.json")
    manifest.rename(manifest.with_suffix(".aside"))
    try:
        status, _, body = get(server, "/report.html")
        assert status == 404 and b"No report" in body and RERUN.encode() in body
    finally:
        manifest.with_suffix(".aside").rename(manifest)
    queries = Path(config.queries)
    before = queries.read_bytes()
    queries.write_bytes(before + b'{"id": "new", "kind": "factual", "prompt": "A", "completion": " B"}\n')
    try:
        status, _, body = get(server, "/report.html")
        assert status == 409 and b"out of date" in body and RERUN.encode() in body
    finally:
        queries.write_bytes(before)
    assert get(server, "/report.html")[0] == 200  # as it was, it is current again


def test_pretrace_report_says_its_url_serves_and_stops_on_sigterm(finished, tmp_path):
    config = finished.config
    process = subprocess.Popen(
        [sys.executable, "-m", "pretrace.pipeline.cli", "report", "--config", str(finished.path), "--port", "0"],
        env={**os.environ, "DAGSTER_HOME": str(tmp_path / ".dagster_home")},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = process.stdout.readline()
        assert line.startswith("[pretrace] the report: http://127.0.0.1:"), line
        url = line.split()[3]
        with urllib.request.urlopen(url, timeout=30) as response:
            assert response.read() == stored(config, "report.html")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        process.kill()


@pytest.mark.integration
def test_a_report_on_s3_is_served_from_there(finished, s3_root):
    config = finished.config
    upload(Path(config.storage), f"{s3_root}/data")
    on_s3 = config.model_copy(update={"storage": f"{s3_root}/data"})
    with in_background(serve_report(ReportSite(on_s3), port=0)) as server:
        status, _, body = get(server, "/figures/sources.png")
        assert (status, body) == (200, stored(config, "figures/sources.png"))
        assert get(server, "/manifest.json")[0] == 404


@pytest.mark.integration
@needs_chromium
def test_a_browser_shows_the_served_report_with_every_plot(server):
    with chromium_page() as page:
        blocked = []
        page.on("console", lambda m: blocked.append(m.text) if "Content Security Policy" in m.text else None)
        page.goto(server.url, wait_until="load")
        assert page.title() == "pretrace influence report"
        images = page.evaluate("() => Array.from(document.images).map(i => i.complete && i.naturalWidth > 100)")
        assert len(images) == len(FIGURES) and all(images)
    assert blocked == []  # nothing refused by the page's security policy
