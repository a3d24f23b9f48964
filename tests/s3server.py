"""Pytest fixtures for a local S3 (moto's standalone server), for tests that exercise s3:// URLs.

Registered for the whole suite by tests/conftest.py.
The server runs in a thread of the test process; code under test reaches it over real HTTP
through the standard AWS environment variables, exactly as it would reach AWS or MinIO.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

BUCKET = "pretrace-test"

_AWS_VARS_TO_CLEAR = ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION")


def free_port() -> int:
    """A TCP port of 127.0.0.1 that was free when asked (the caller binds it soon after)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _point_aws_at(mp: pytest.MonkeyPatch, endpoint: str) -> None:
    """Send every AWS client to `endpoint` with dummy credentials, whatever the caller's environment says."""
    for name in _AWS_VARS_TO_CLEAR:
        mp.delenv(name, raising=False)
    mp.setenv("AWS_ENDPOINT_URL", endpoint)
    mp.setenv("AWS_ACCESS_KEY_ID", "testing")
    mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    mp.setenv("AWS_DEFAULT_REGION", "us-east-1")


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """Start moto on a free port of 127.0.0.1, point the AWS variables at it, yield the endpoint.

    The bucket ``BUCKET`` exists. The environment is restored and the server stopped at the end.
    """
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    with pytest.MonkeyPatch.context() as mp:
        _point_aws_at(mp, endpoint)
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
        try:
            yield endpoint
        finally:
            server.stop()


@pytest.fixture
def s3_root(s3_server: str) -> str:
    """A fresh, empty ``s3://BUCKET/<unique prefix>`` for one test."""
    return f"s3://{BUCKET}/{uuid.uuid4().hex[:12]}"


def upload(local: Path, url: str) -> None:
    """Copy every file under the folder `local` to the S3 prefix `url`, one PUT each."""
    from pretrace.store.storage import Storage

    store = Storage(url)
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        store.write_bytes(path.relative_to(local).as_posix(), path.read_bytes())


@pytest.fixture
def unreachable_s3(monkeypatch: pytest.MonkeyPatch) -> str:
    """Point the AWS variables at a closed port of 127.0.0.1 for one test; yields the endpoint."""
    endpoint = f"http://127.0.0.1:{free_port()}"  # free a moment ago: nothing listens there
    _point_aws_at(monkeypatch, endpoint)
    return endpoint
