"""The documentation site builds strictly: a broken link or anchor, a page missing from the nav
or a nav entry without its page fails here (mkdocs.yml turns each into a warning, strict into
an error)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def build(source: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(source / "mkdocs.yml"), "-d", str(site)],
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )


def test_the_docs_build_strictly(tmp_path):
    out = build(ROOT, tmp_path / "site")
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "site" / "architecture" / "index.html").exists()


def test_a_broken_link_fails_the_build(tmp_path):
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "docs", copy / "docs")
    shutil.copy(ROOT / "mkdocs.yml", copy)
    with (copy / "docs" / "index.md").open("a") as page:
        page.write("\nSee [a page that is not there](no-such-page.md).\n")
    out = build(copy, tmp_path / "site")
    assert out.returncode != 0 and "no-such-page.md" in out.stderr
