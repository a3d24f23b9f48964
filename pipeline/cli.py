"""`pretrace demo | run | ui`: the whole graph in-process through Dagster, or the web UI."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import MutableMapping
from pathlib import Path

import dagster as dg

from pretrace.config import load_config
from pretrace.errors import PretraceError

from .settings import CONFIG_ENV, DEMO_DIR_ENV, demo_config

DAGSTER_HOME_DIR = ".dagster_home"


def _dagster_home(env: MutableMapping[str, str]) -> Path:
    """$DAGSTER_HOME (./.dagster_home unless set), created with a dagster.yaml: one persistent
    instance, so `pretrace ui` shows the runs of `pretrace demo|run` and their metadata."""
    home = Path(env.setdefault("DAGSTER_HOME", str(Path(DAGSTER_HOME_DIR).absolute())))
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").touch()
    return home


def _instance() -> dg.DagsterInstance:
    _dagster_home(os.environ)
    return dg.DagsterInstance.get()


def _run(defs: dg.Definitions, refit: bool) -> None:
    from .runner import materialize_pipeline

    started = time.monotonic()
    storage = defs.resources["storage"].storage
    shards = materialize_pipeline(defs, _instance(), refit=refit, log=lambda m: print(f"[pretrace] {m}", flush=True))
    print(f"\n[pretrace] done in {time.monotonic() - started:.0f} s; {len(shards)} shard(s).")
    print(f"[pretrace] scores:  {storage}/influence_scores/<shard>.parquet  (query_id, doc_id, score)")
    print(f"[pretrace] report:  {storage}/influence_report/")
    print("[pretrace] browse the runs and metadata with: pretrace ui")


def demo(args: argparse.Namespace) -> None:
    from pretrace.demo.corpus import build_demo_corpus
    from pretrace.demo.queries import build_demo_queries

    from .definitions import build_definitions

    config = demo_config(args.dir, args.storage)
    corpus = Path(config.corpus)
    if not corpus.exists():
        print(f"[pretrace] building the demo corpus and queries in {corpus.parent}")
        build_demo_corpus(corpus)
        build_demo_queries(Path(config.queries))
    _run(build_definitions(config, demo=True), refit=args.refit)


def run(args: argparse.Namespace) -> None:
    from .definitions import build_definitions

    _run(build_definitions(load_config(args.config)), refit=args.refit)


def ui(args: argparse.Namespace) -> None:
    env = dict(os.environ)
    _dagster_home(env)
    if args.config:
        env[CONFIG_ENV] = str(Path(args.config).absolute())
    env.setdefault(DEMO_DIR_ENV, str(Path(".").absolute()))
    command = [sys.executable, "-m", "dagster", "dev", "-m", "pipeline.definitions", "-h", args.host, "-p", str(args.port)]
    raise SystemExit(subprocess.call(command, env=env))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="pretrace", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("demo", help="build the demo corpus, train a tiny model, compute influence")
    p.add_argument("--storage", help="artefact root, local folder or s3://bucket/prefix (default ./data)")
    p.add_argument("--dir", default=".", help="where demo-data/ and data/ go (default: here)")
    p.add_argument("--refit", action="store_true", help="refit the EK-FAC factors")
    p.set_defaults(func=demo)
    p = commands.add_parser("run", help="compute influence for the model, corpus and queries of a config")
    p.add_argument("--config", required=True, help="pretrace.yaml")
    p.add_argument("--refit", action="store_true", help="refit the EK-FAC factors on the current shards")
    p.set_defaults(func=run)
    p = commands.add_parser("ui", help="the Dagster web UI (dagster dev) on this pipeline")
    p.add_argument("--config", help="pretrace.yaml (default: the demo)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=3000)
    p.set_defaults(func=ui)
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except Exception as exc:
        cause = _user_error(exc)
        if cause is None:
            raise
        raise SystemExit(f"pretrace: {cause}") from None


def _user_error(exc: BaseException | None) -> str | None:
    """The error meant for the user (a PretraceError, or an asset's dg.Failure), unwrapped from
    Dagster's step error."""
    while exc is not None:
        if isinstance(exc, PretraceError):
            return str(exc)
        if isinstance(exc, dg.Failure):
            return exc.description
        exc = getattr(exc, "user_exception", None) or exc.__cause__
    return None


if __name__ == "__main__":
    main()
