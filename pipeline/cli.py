"""`pretrace demo | run | check | plan | status | verify | clean | ui | report`: the command line.

Only the parser lives here, so `pretrace --help` and argument errors answer at once; a command's
work (Dagster, torch, transformers) is imported once its arguments parse (`commands`).
"""

from __future__ import annotations

import argparse


def _demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", help="the demo's artefact root, local folder or s3://bucket/prefix (default ./data)")
    p.add_argument("--dir", default=".", help="where the demo's demo-data/ and data/ are (default: here)")


def _plan_arguments(p: argparse.ArgumentParser) -> None:
    """`pretrace plan --gpu ...`: a study planned for named hardware, not this machine."""
    p.add_argument("--gpu", help="plan for this card: h100-80gb, h200-141gb, or a memory size such as 80GB")
    p.add_argument("--gpus", type=int, help="GPUs sharing the work (default 1)")
    p.add_argument("--host-memory", help="host memory of a step's pod, e.g. 256GB (default: not checked)")
    p.add_argument("--disk", help="disk for the whole study's artefacts, e.g. 20TB (default 1PB)")
    p.add_argument(
        "--model", help="the model folder (or URL) whose config.json is planned (default: the config's model)"
    )
    p.add_argument("--documents", type=int, help="documents in the corpus (default: counted from its files' bytes)")
    p.add_argument(
        "--tokens-per-document", type=int, help="mean tokens a document, with --documents (default max_length)"
    )
    p.add_argument(
        "--bytes-per-token",
        type=float,
        help="corpus bytes a token when counting from the files (default: measured with the model's tokenizer, else 4)",
    )
    p.add_argument("--queries", type=int, help="queries to explain (default: the queries file's count)")
    p.add_argument("--rates", help="folder of bench/gpu.py result files, gpu-<date>-*.json (default bench/results)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="pretrace",
        description="Trace a language model's outputs back to the pretraining documents that shaped "
        "them, with EK-FAC influence functions, as Dagster assets.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("demo", help="build the demo corpus, train a tiny model, compute influence")
    _demo_arguments(p)
    p.add_argument("--force", action="store_true", help="recompute every artefact, current or not")
    p.add_argument(
        "--steps",
        type=int,
        help="training steps of the demo model (default 4000, the shipped model's; remembered in "
        "demo-data/settings.json, so later runs and `pretrace ui` of this folder use it)",
    )
    p.add_argument(
        "--retrain",
        action=argparse.BooleanOptionalAction,
        help="train the demo model here even where the shipped one fits, and say whether training reproduced "
        "its bytes (remembered like --steps; --no-retrain: use the shipped model again)",
    )
    p.add_argument(
        "--compare-seeds",
        type=int,
        nargs="*",
        metavar="SEED",
        help="also train demo models with these seeds and compare their influence with the main one's "
        "(`compare_models`; remembered like --steps; none given: compare none)",
    )
    p.set_defaults(command="demo")
    p = commands.add_parser(
        "run", help="compute what is missing or stale for the model, corpus and queries of a config"
    )
    p.add_argument("--config", required=True, help="pretrace.yaml")
    p.add_argument("--force", action="store_true", help="recompute every artefact, current or not")
    p.set_defaults(command="run")
    p = commands.add_parser("check", help="check the config, checkpoint, queries and corpus files; compute nothing")
    p.add_argument("--config", help="pretrace.yaml (default: the demo)")
    _demo_arguments(p)
    p.set_defaults(command="check")
    p = commands.add_parser(
        "plan",
        help="the memory each step will need (device, host, disk) and the layer groups a run will use; "
        "with --gpu, the cheapest setting for that hardware and the study's GPU-hours, from the model's "
        "config.json alone (no weights, no tokenizer needed)",
    )
    p.add_argument("--config", help="pretrace.yaml (default: the demo)")
    _demo_arguments(p)
    _plan_arguments(p)
    p.set_defaults(command="plan")
    p = commands.add_parser("status", help="which artefacts are current, missing or stale, and why")
    p.add_argument("--config", help="pretrace.yaml (default: the demo)")
    p.add_argument("--all", action="store_true", help="list current artefacts too")
    _demo_arguments(p)
    p.set_defaults(command="status")
    p = commands.add_parser(
        "verify", help="hash every stored file again: which artefacts are damaged, and what a run recomputes"
    )
    p.add_argument("--config", help="pretrace.yaml (default: the demo)")
    _demo_arguments(p)
    p.set_defaults(command="verify")
    p = commands.add_parser("clean", help="remove the artefacts and partitions of corpus files that are gone")
    p.add_argument("--config", help="pretrace.yaml (default: the demo)")
    _demo_arguments(p)
    p.set_defaults(command="clean")
    p = commands.add_parser("ui", help="the Dagster web UI (dagster dev) on this pipeline")
    p.add_argument("--config", help="pretrace.yaml (default: the demo)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=3000)
    p.set_defaults(command="ui")
    p = commands.add_parser(
        "report", help="serve the committed report to a browser over HTTP, read-only (the UI's report links)"
    )
    p.add_argument("--config", help="pretrace.yaml (default: the demo)")
    p.add_argument(
        "--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1: this machine only)"
    )
    p.add_argument(
        "--port", type=int, help="default: $PRETRACE_REPORT_PORT, else 3080, the port the UI's report links name"
    )
    _demo_arguments(p)
    p.set_defaults(command="report")
    args = parser.parse_args(argv)
    from pretrace.pipeline import commands

    commands.execute(args)


if __name__ == "__main__":
    main()
