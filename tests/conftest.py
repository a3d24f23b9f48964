"""Fixtures every test package may use: the local S3 server (tests/s3server.py), one torch thread,
and a trained tiny Llama."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerFast

pytest_plugins = ["tests.s3server"]


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """How `pytest -n 2` (the README's test command, pytest-xdist) shares the tests between
    workers: each module whole, since its tests share module-scoped fixtures (finished
    projects), and the integration package whole, since it shares package-scoped servers
    (PostgreSQL, S3, `dagster dev`). It is collected first, so it starts first."""
    from xdist.scheduler import LoadScopeScheduling

    class ModulesAndIntegration(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "tests/integration" if nodeid.startswith("tests/integration/") else super()._split_scope(nodeid)

    return ModulesAndIntegration(config, log)


@pytest.fixture(scope="session", autouse=True)
def private_digest_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The suite's content-digest cache (pretrace.store.fingerprint) lives in its own temp folder,
    inherited by every subprocess, so tests neither read nor fill the user's cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRETRACE_CACHE_DIR", str(tmp_path_factory.mktemp("pretrace-cache")))
        yield


@pytest.fixture(scope="session", autouse=True)
def one_thread_everywhere() -> Iterator[None]:
    """torch computes on one thread in the test processes and in every process they start
    (`pretrace` runs, `dagster dev`, its run workers): beside two xdist workers on a 2-core
    machine, a process that takes every core oversubscribes them and runs many times slower; and
    float sums depend on the thread count, so byte comparisons between a run in a subprocess and
    one in-process need the same count on both sides."""
    from pretrace.model.threads import torch_threads

    with pytest.MonkeyPatch.context() as mp:
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            mp.setenv(name, "1")
        with torch_threads(1):  # 2 oversubscribed threads: small steps ~60x slower (15 s vs 0.2 s)
            yield


@pytest.fixture(scope="session")
def trained_llama() -> tuple[PreTrainedTokenizerFast, torch.nn.Module]:
    """(tokenizer, model): the tiny Llama trained on sentence_documents, trained once per session.
    Shared, so consumers must not change its weights (wrap_model only moves it and sets eval
    mode; kronfluence works on a deep copy)."""
    from pretrace.testing.tiny import sentence_documents, tiny_tokenizer, trained_tiny_llama

    tok = tiny_tokenizer()
    return tok, trained_tiny_llama(tok, sentence_documents(tok))
