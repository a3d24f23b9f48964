"""The artefact layout: commits whose manifest is the commit point, reads checked against it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pyarrow as pa
import pytest

from pretrace.errors import ConcurrentChange
from pretrace.project.artefacts import INFLUENCE_REPORT, QUERIES, invalidation_table
from pretrace.project.manifests import ArtefactStore, Manifest
from pretrace.store.storage import Storage

ROOT = Path(__file__).resolve().parents[3]


def basis(artefact, **inputs) -> Manifest:
    return Manifest(artefact.name, None, artefact.code_version, {}, inputs)


def test_a_commit_that_dies_between_files_leaves_no_artefact(tmp_path, monkeypatch):
    store = ArtefactStore(Storage(str(tmp_path)))
    first = store.commit(
        INFLUENCE_REPORT, basis(INFLUENCE_REPORT, x="1"), {"a.parquet": pa.table({"v": [1]}), "b.html": b"one"}
    )
    assert store.manifest(INFLUENCE_REPORT) == first
    write = store._write

    def die_on_second(key, content, calls=[]):  # noqa: B006 - counts calls of this commit only
        calls.append(key)
        if len(calls) == 2:
            raise OSError("disk full")
        return write(key, content)

    monkeypatch.setattr(store, "_write", die_on_second)
    with pytest.raises(OSError, match="disk full"):
        store.commit(
            INFLUENCE_REPORT, basis(INFLUENCE_REPORT, x="2"), {"a.parquet": pa.table({"v": [2]}), "b.html": b"two"}
        )
    assert store.manifest(INFLUENCE_REPORT) is None  # neither the old artefact nor half the new one


def test_a_reader_never_mixes_two_versions(tmp_path):
    store = ArtefactStore(Storage(str(tmp_path)))
    manifest = store.commit(QUERIES, basis(QUERIES), {"queries.parquet": pa.table({"id": ["a"]})})
    reader = store.reader(QUERIES, manifest)
    assert reader.table("queries.parquet").column("id").to_pylist() == ["a"]
    Storage(str(tmp_path)).write_parquet("queries/queries.parquet", pa.table({"id": ["b"]}))  # another writer
    with pytest.raises(ConcurrentChange, match="is not the file its manifest describes"):
        reader.table("queries.parquet")


def test_files_a_new_version_no_longer_has_are_removed(tmp_path):
    store = ArtefactStore(Storage(str(tmp_path)))
    store.commit(INFLUENCE_REPORT, basis(INFLUENCE_REPORT), {"old.parquet": pa.table({"v": [1]}), "report.html": b"1"})
    new = store.commit(INFLUENCE_REPORT, basis(INFLUENCE_REPORT), {"report.html": b"2"})
    assert sorted(Storage(str(tmp_path)).list("influence_report")) == [
        "influence_report/manifest.json",
        "influence_report/report.html",
    ]
    assert new.files["report.html"]["bytes"] == 1


def test_outputs_must_be_the_artefacts_files(tmp_path):
    with pytest.raises(ValueError, match="do not match its files"):
        ArtefactStore(Storage(str(tmp_path))).commit(QUERIES, basis(QUERIES), {"other.parquet": pa.table({"v": [1]})})


def test_artefacts_are_written_with_the_users_umask(tmp_path):
    store = ArtefactStore(Storage(str(tmp_path)))
    store.commit(QUERIES, basis(QUERIES), {"queries.parquet": pa.table({"id": ["a"]})})
    mask = os.umask(0)
    os.umask(mask)
    mode = stat.S_IMODE((tmp_path / "queries" / "queries.parquet").stat().st_mode)
    assert mode == 0o666 & ~mask


def test_the_docs_show_the_invalidation_table_of_the_code():
    assert invalidation_table() in (ROOT / "docs" / "recompute.md").read_text()
