"""What each `pretrace` command does: the whole graph in-process through Dagster, checks, plans,
status, cleaning, the web UI, or the report's server. Imported only once the arguments parse
(`pretrace.pipeline.cli`)."""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import sys
import time
import traceback
import warnings
from collections.abc import Mapping, MutableMapping
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import dagster as dg
import yaml

from pretrace.assets.common import PROGRESS_LOGGER, StepInterrupted
from pretrace.config import PretraceConfig, load_config
from pretrace.errors import InputError, PretraceError
from pretrace.project.provenance import Project

from .settings import CONFIG_ENV, DEMO_DIR_ENV, LOCAL_INSTANCE, demo_config, save_demo_settings, workspace_config
from .signals import STOP_SIGNALS, record_signals, run_process_group

DAGSTER_HOME_DIR = ".dagster_home"


def _dagster_home(env: MutableMapping[str, str]) -> Path:
    """$DAGSTER_HOME (./.dagster_home unless set), created with a dagster.yaml (LOCAL_INSTANCE)
    when it has none: one persistent instance, so `pretrace ui` shows the runs of
    `pretrace demo|run` and their metadata. Telemetry stays off unless the user's dagster.yaml
    turns it on."""
    home = Path(env.setdefault("DAGSTER_HOME", str(Path(DAGSTER_HOME_DIR).absolute())))
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(yaml.safe_dump(LOCAL_INSTANCE, sort_keys=False))
    elif "telemetry" not in (yaml.safe_load(config.read_text()) or {}):
        with config.open("a") as f:  # appended, so the user's comments and layout stay
            f.write("\n" + yaml.safe_dump({"telemetry": LOCAL_INSTANCE["telemetry"]}))
    return home


def _instance() -> dg.DagsterInstance:
    _dagster_home(os.environ)
    return dg.DagsterInstance.get()


def _say(message: str) -> None:
    print(f"[pretrace] {message}", flush=True)


def _run(defs: dg.Definitions, force: bool, config: str | None = None) -> None:
    """Compute what is stale; ``config``: the pretrace.yaml (None for the demo), for the UI hint."""
    from pretrace.project.run_lock import exclusive_run, project_inputs

    from .runner import materialize_pipeline

    started = time.monotonic()
    project = _check_inputs(defs, load_weights=False)
    _print_plans(project)
    ran: list[str] = []

    def log(message: str) -> None:
        ran.append(message)
        _say(message)

    with exclusive_run(project.storage, project_inputs(project.config)):
        project = materialize_pipeline(
            defs, _instance(), force=force, log=log, console_level="CRITICAL", project=project
        )
    storage = project.storage.root
    work = sum(m.startswith("materializing") for m in ran)
    print(
        f"\n[pretrace] done in {time.monotonic() - started:.0f} s: {work} artefact(s) computed, "
        f"{len(project.shards)} shard(s); everything is current."
    )
    print(f"[pretrace] scores:  {storage}/influence_scores/<shard>.parquet  (query_id, doc_id, score)")
    print(f"[pretrace] report:  {storage}/influence_report/report.html")
    print(f"[pretrace] open the report in a browser with: {_command('report', config)}")
    print(f"[pretrace] browse the runs and metadata with: {_command('ui', config)}")


def _command(name: str, config: str | None) -> str:
    """The `pretrace` command line of ``name`` on this project: its --config, or none for the demo."""
    return f"pretrace {name}" if config is None else f"pretrace {name} --config {shlex.quote(config)}"


def _rerun(config: str | None) -> str:
    """The command that computes what is missing or stale: of the config, or of the demo."""
    return "pretrace demo" if config is None else _command("run", config)


def _check_inputs(defs: dg.Definitions, *, load_weights: bool) -> Project:
    """Every input problem at once, before any artefact is computed (pretrace.project.preflight); the
    project it read, for the run to go on from."""
    from pretrace.project.preflight import preflight

    project = defs.resources["pretrace"].project()
    for warning in preflight(project, load_weights=load_weights, progress=_say):
        _say(f"warning: {warning}")
    return project


def _print_plans(project: Project) -> None:
    """Each model's memory plan (`pretrace.project.device_plan`); a plan that cannot fit the device stops
    the run here, before any weights are loaded."""
    from pretrace.project.device_plan import project_plans

    for name, device_plan in project_plans(project):
        _say(f"{'model' if name is None else f'compared model {name}'}: {device_plan.headline()}")
        print(device_plan.summary(), flush=True)


def _definitions(args: argparse.Namespace) -> dg.Definitions:
    from .definitions import build_definitions

    if args.command == "demo" or getattr(args, "config", None) is None:
        return build_definitions(demo_config(args.dir, args.storage), demo=True)
    return build_definitions(load_config(args.config))


def demo(args: argparse.Namespace) -> None:
    from pretrace.demo.corpus import build_demo_corpus
    from pretrace.demo.queries import build_demo_queries

    if args.steps is not None:
        save_demo_settings(args.dir, demo_steps=args.steps)
    if args.retrain is not None:
        save_demo_settings(args.dir, demo_retrain=args.retrain)
    if args.compare_seeds is not None:
        save_demo_settings(args.dir, compare_models={f"seed{s}": {"seed": s} for s in args.compare_seeds})
    config = demo_config(args.dir, args.storage)
    corpus = Path(config.corpus)
    if not corpus.exists():
        print(f"[pretrace] building the demo corpus and queries in {corpus.parent}")
        build_demo_corpus(corpus)
        build_demo_queries(Path(config.queries))
    _run(_definitions(args), force=args.force)


def run(args: argparse.Namespace) -> None:
    _run(_definitions(args), force=args.force, config=args.config)


def check(args: argparse.Namespace) -> None:
    """Validate the config, checkpoint (weights included), queries and every corpus file; compute nothing."""
    _check_inputs(_definitions(args), load_weights=True)
    _say("every input is usable; nothing was computed")


_STUDY_FLAGS = ("gpus", "host_memory", "disk", "model", "documents", "tokens_per_document", "bytes_per_token")
_STUDY_FLAGS += ("queries", "rates")


def plan(args: argparse.Namespace) -> None:
    """Each step's peak device memory, host memory and disk, from the model's configuration alone;
    with --gpu, for that hardware: the cheapest setting that fits and the study's GPU-hours."""
    if args.gpu is not None:
        _print_study_plan(args)
        return
    given = [flag for flag in _STUDY_FLAGS if getattr(args, flag) is not None]
    if given:
        flag = given[0].replace("_", "-")
        raise InputError(f"--{flag} plans for named hardware: give --gpu too, e.g. --gpu h100-80gb")
    _print_plans(_definitions(args).resources["pretrace"].project())


def _print_study_plan(args: argparse.Namespace) -> None:
    """`pretrace.project.device_plan.plan_study` of the config (or the demo's) on the --gpu target."""
    from pretrace.planning.measured_rates import RESULTS
    from pretrace.planning.targets import target
    from pretrace.project.device_plan import plan_study

    demo = args.config is None and args.model is None
    if args.config is not None:
        config = load_config(args.config)
    else:  # the demo's settings, or pretrace's defaults for a model given alone
        config = demo_config(args.dir, args.storage) if demo else PretraceConfig(model=args.model)
    hardware = target(args.gpu, args.gpus or 1, args.host_memory, args.disk)
    study = plan_study(
        config,
        hardware,
        demo=demo,
        model=args.model,
        documents=args.documents,
        tokens_per_document=args.tokens_per_document,
        bytes_per_token=args.bytes_per_token,
        queries=args.queries,
        rates_folder=Path(args.rates) if args.rates else RESULTS,
    )
    _say(f"study plan for {hardware.name}, from the model's configuration (no weights loaded)")
    print(study.report(), flush=True)


def status(args: argparse.Namespace) -> None:
    """Each artefact partition's status by the recompute policy, without computing anything."""
    _print_statuses(_definitions(args).resources["pretrace"].project(), args.all)


def verify(args: argparse.Namespace) -> None:
    """Every stored file hashed again, no kept digest trusted: which artefacts are damaged (their
    bytes are not the ones their manifests record) and what a run would recompute."""
    from pretrace.store.fingerprint import DigestCache

    resource = _definitions(args).resources["pretrace"]
    project = Project(resource.config, demo=resource.demo, digests=DigestCache(persistent=False))
    damaged = _print_statuses(project, show_all=False)
    if damaged:
        raise SystemExit(f"pretrace: {damaged} damaged artefact(s); `pretrace run` recomputes them")
    _say("every stored file holds the bytes its manifest records")


def _print_statuses(project: Project, show_all: bool) -> int:
    """Print each artefact partition's status (all, or those not current) and a summary; how
    many are damaged."""
    counts: dict[str, int] = {}
    damaged = 0
    orphans = []
    for _, owner in project.projects():  # compared models' artefacts are named `<model>/<artefact>`
        for artefact, shard, state in owner.statuses():
            counts[state.state] = counts.get(state.state, 0) + 1
            damaged += state.reason.startswith("damaged")
            if not state.current or show_all:
                reason = f"  ({state.reason})" if state.reason else ""
                print(f"{state.state:8} {owner.label(artefact, shard)}{reason}")
        orphans += [(owner, artefact, shard) for artefact, shard in owner.orphans()]
    for owner, artefact, shard in orphans:
        print(
            f"{'orphan':8} {owner.label(artefact, shard)}  (its corpus file is gone, it is no longer a fit shard, "
            "or it was fitted in another number of layer groups)"
        )
    summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    print(f"[pretrace] {summary}" + (f", {len(orphans)} orphaned (pretrace clean removes them)" if orphans else ""))
    return damaged


def clean(args: argparse.Namespace) -> None:
    """Remove orphaned artefacts (`Project.orphans`) and killed writers' temporaries."""
    from pretrace.assets.partitions import shard_partitions

    project = _definitions(args).resources["pretrace"].project()
    orphans = [(owner, artefact, shard) for _, owner in project.projects() for artefact, shard in owner.orphans()]
    for owner, artefact, shard in orphans:
        for key in owner.store.delete(artefact, shard):
            print(f"removed {owner.storage.url(key)}")
    for path in project.storage.remove_leftovers():
        print(f"removed {path}")
    instance = _instance()
    gone = sorted(set(instance.get_dynamic_partitions(shard_partitions.name)) - set(project.shards))
    for shard in gone:
        instance.delete_dynamic_partition(shard_partitions.name, shard)
        print(f"removed the `shard` partition {shard}")
    print(f"[pretrace] cleaned {len(orphans)} orphaned artefact(s) and {len(gone)} partition(s)")


def ui(args: argparse.Namespace) -> None:
    from .sensors import UI_URL_ENV

    env = dict(os.environ)
    _dagster_home(env)
    if args.config:
        env[CONFIG_ENV] = str(Path(args.config).absolute())
    env.setdefault(DEMO_DIR_ENV, str(Path(".").absolute()))
    env.setdefault(UI_URL_ENV, _local_url(args.host, args.port))  # the corpus sensor reloads the location
    command = [
        sys.executable,
        "-m",
        "dagster",
        "dev",
        "-m",
        "pretrace.pipeline.definitions",
        "-h",
        args.host,
        "-p",
        str(args.port),
    ]
    with _report_beside(env):
        raise SystemExit(run_process_group(command, env))


def _local_url(host: str, port: int) -> str:
    """The webserver's address from this machine (a wildcard host listens on loopback too)."""
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::', '') else host}:{port}"


def _report_beside(env: Mapping[str, str]) -> AbstractContextManager[object]:
    """The report's server, in this process, while `dagster dev` runs in ``env``: the UI's report
    links open, and the server stops with the UI. One that cannot start (its port is taken, by
    `pretrace report` say) is a warning: the UI starts anyway."""
    from pretrace.report.serve import ReportSite, in_background, report_port, serve_report

    try:
        config, demo = workspace_config(env)
        server = serve_report(ReportSite(config, demo, _rerun(env.get(CONFIG_ENV))), port=report_port(env))
    except InputError as exc:
        _say(f"warning: the report is not served: {exc}")
        return nullcontext()
    _say(f"the report: {server.url}")
    return in_background(server)


def report(args: argparse.Namespace) -> None:
    """Serve the committed report, read-only, until stopped: the address the UI's links open."""
    from pretrace.report.serve import ReportSite, serve_report

    resource = _definitions(args).resources["pretrace"]
    site = ReportSite(resource.config, resource.demo, _rerun(args.config))
    with serve_report(site, args.host, args.port) as server:
        _say(f"the report: {server.url}  (read-only; Ctrl-C stops)")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            _say("stopped serving the report")


def _quiet_libraries() -> None:
    """The terminal shows pretrace's own progress: no Dagster beta warnings, no transformers
    progress bars or advice meant for its own API."""
    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    warnings.filterwarnings("ignore", category=dg.PreviewWarning)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    progress = logging.getLogger(PROGRESS_LOGGER)
    if not progress.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("[pretrace]   %(message)s"))
        progress.addHandler(handler)
        progress.setLevel(logging.INFO)
        progress.propagate = False


def _save_trace(exc: BaseException) -> Path:
    """The whole stack (Dagster's step error and its causes) in a log file under $DAGSTER_HOME."""
    folder = _dagster_home(os.environ) / "logs"
    folder.mkdir(exist_ok=True)
    path = folder / f"pretrace-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    path.write_text("".join(traceback.format_exception(exc)))
    return path


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


COMMANDS = {
    "demo": demo,
    "run": run,
    "check": check,
    "plan": plan,
    "status": status,
    "verify": verify,
    "clean": clean,
    "ui": ui,
    "report": report,
}


def _stop_on_signals() -> None:
    """SIGINT and SIGTERM both stop the command, also where the shell started it in the background
    with SIGINT ignored. Dagster's in-process run saves this handler, maps both signals to its own
    interrupt while a step runs, and puts this one back after each run; had the ignored handler been
    the one it saved, every signal between two runs would be ignored. A signal Dagster's handler
    took after its last check is read back between runs (`signals`)."""

    def stop(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    for signum in STOP_SIGNALS:
        signal.signal(signum, stop)
    record_signals()


INTERRUPTED = (
    "stopped by a signal; finished artefacts are kept and the one being written was discarded: "
    "run the same command again to go on"
)


def execute(args: argparse.Namespace) -> None:
    """Run the parsed command; a user's error ends it with one line per problem, the trace in a file."""
    _stop_on_signals()
    _quiet_libraries()
    try:
        COMMANDS[args.command](args)
    except (KeyboardInterrupt, dg.DagsterExecutionInterruptedError, StepInterrupted):
        print(f"pretrace: {INTERRUPTED}", file=sys.stderr)
        raise SystemExit(130) from None
    except Exception as exc:
        trace = _save_trace(exc)
        cause = _user_error(exc)
        if cause is None:
            cause = f"unexpected {type(exc).__name__}: {exc} (a bug; please report it with the trace)"
        print(f"[pretrace] the full trace is in {trace}", file=sys.stderr)
        raise SystemExit("\n".join(f"pretrace: {line}" for line in cause.splitlines())) from None
