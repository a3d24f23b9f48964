#!/bin/sh
# Regenerate infra/requirements.lock (`make lock`): pyproject.toml plus infra/requirements.in,
# resolved from PyPI for the image's platform (Linux x86_64, the Python of infra/Dockerfile's FROM).
# uv runs from a throwaway venv so the project's .venv stays as `make venv` made it.
set -eu
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
UV_SPEC="${UV_SPEC:-uv==0.13.8}"
# The FROM line's exact Python, e.g. 3.11.17: the lock is valid for what the image runs.
PY_VERSION=$(sed -n 's/^FROM python:\([0-9]*\.[0-9]*\.[0-9]*\)-.*/\1/p' infra/Dockerfile)
[ -n "$PY_VERSION" ] || { echo "infra/Dockerfile: no exact python:X.Y.Z base image" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PYTHON" -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install -q "$UV_SPEC"
# UV_NO_CONFIG and --index-url: PyPI alone, whatever uv.toml or local wheel folders a machine has.
UV_NO_CONFIG=1 "$tmp/venv/bin/uv" pip compile pyproject.toml infra/requirements.in \
    --python-version "$PY_VERSION" --python-platform x86_64-manylinux_2_28 \
    --index-url https://pypi.org/simple --no-cache --quiet \
    --custom-compile-command "make lock" -o infra/requirements.lock
