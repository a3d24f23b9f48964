"""What installing pretrace puts into site-packages: one package, pretrace, holding the Dagster
layer as pretrace.pipeline, pretrace.assets and pretrace.resources, and every module of the tree.

The wheel is built from this checkout and installed into a fresh folder, as a user's
`pip install .` would; the Dagster definitions are then imported from there alone.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = {
    "pretrace": "pretrace",
    "pipeline": "pretrace/pipeline",
    "assets": "pretrace/assets",
    "resources": "pretrace/resources",
}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        cwd=out,
    )
    return next(out.glob("pretrace-*.whl"))


def test_the_wheel_installs_one_top_level_package(wheel):
    with zipfile.ZipFile(wheel) as archive:
        tops = {name.split("/")[0] for name in archive.namelist()}
    assert {top for top in tops if not top.endswith(".dist-info")} == {"pretrace"}


def test_the_wheel_holds_every_module_of_the_tree(wheel):
    """The package list in pyproject.toml is explicit: a new subpackage missing from it fails here,
    and so does a demo without its vendored snapshots or its shipped model."""
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    expected = {
        f"{installed}/{path.relative_to(ROOT / folder).as_posix()}"
        for folder, installed in FOLDERS.items()
        for path in (ROOT / folder).rglob("*.py")
    } | {  # the demo's snapshots and its shipped model
        f"pretrace/demo/data/{path.relative_to(ROOT / 'pretrace/demo/data').as_posix()}"
        for path in (ROOT / "pretrace/demo/data").rglob("*")
        if path.is_file()
    }
    assert sorted(expected - names) == []


def test_the_installed_package_loads_the_definitions_and_names_the_cli(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    code = "import pretrace, pretrace.pipeline.definitions as d; print(pretrace.__file__); print(type(d.defs).__name__)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={"PYTHONPATH": str(target), "PATH": ""},
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    where, kind = out.stdout.split()
    assert Path(where).is_relative_to(target) and kind == "Definitions"
    entry_points = next(target.glob("pretrace-*.dist-info")) / "entry_points.txt"
    assert "pretrace = pretrace.pipeline.cli:main" in entry_points.read_text()
    assert not any((target / name).exists() for name in ("pipeline", "assets", "resources"))
