"""Fixtures every test package may use: the local S3 server (tests/s3server.py)."""

pytest_plugins = ["tests.s3server"]
