"""What deciding costs: a rerun with nothing changed against the first run, and the recompute
policy's evaluation over many shards.

    python -m bench.rerun              # ~1 minute on a 2-core CPU
    python -m bench.rerun --shards 200 # the policy figure at another corpus size

1. The tiny test project (pretrace/testing/project.py: two shards, three queries), run in-process
   with `pretrace run`'s runner: the first run, then a rerun with nothing changed, which must
   compute nothing. Figure: rerun / first run.
2. A storage root of N shards whose every artefact is current (manifests committed through
   pretrace's own layout, with stand-in file contents: the policy reads manifests and listings,
   never the files), and the time `Project.statuses()` takes to decide that all of them are
   current, cold (a fresh Project, as each automation tick and `pretrace status` use). Figure:
   that time against one run of the tiny project's first run, and per shard in milliseconds.
   Deciding verifies every stored file's bytes against its manifest: by a digest kept under the
   file's stamp (the steady state, `policy_*`), by hashing every file once when no digest is
   kept (`first_verification_vs_first_run`), and with none trusted, as `pretrace verify` does
   (`verify_vs_first_run`). The stand-in files are a few bytes each: at real sizes the hashing
   figures grow with the bytes stored, the steady state does not.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

from pretrace.config import load_config
from pretrace.pipeline.runner import run_in_process as run_pipeline
from pretrace.project.provenance import Project
from pretrace.store.fingerprint import CACHE_ENV, DigestCache
from pretrace.testing.project import make_project

ROOT = Path(__file__).resolve().parents[1]
warnings.filterwarnings("ignore")


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def current_root(config, shards: int) -> None:
    """A project of `shards` copies of one corpus file, every artefact committed as current."""
    corpus = Path(config.corpus)
    content = sorted(corpus.iterdir())[0].read_bytes()
    for path in list(corpus.iterdir()):
        path.unlink()
    for i in range(shards):
        (corpus / f"shard-{i:05d}.jsonl").write_bytes(content)
    project = Project(config)
    for artefact in project.graph.values():
        for shard in project.partitions(artefact):
            status = project.status(artefact, shard)
            files = {name: b"stand-in" for name in artefact.files if not name.endswith("/")} or {"report.html": b"x"}
            project.store.commit(artefact, status.expected, files)
            project.forget(artefact, shard)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shards", type=int, default=1000, help="shards of the policy figure (default 1000)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pretrace-bench-") as tmp:
        os.environ[CACHE_ENV] = str(Path(tmp) / "cache")  # the bench's digests stay out of the user's cache
        config = load_config(make_project(Path(tmp) / "tiny"))
        first = seconds(lambda: run_pipeline(config))
        ran: list[str] = []
        rerun = seconds(lambda: ran.extend(run_pipeline(config)))
        assert ran == [], f"a rerun with nothing changed computed {ran}"
        print(f"first run {first:.2f} s, rerun with nothing changed {rerun:.3f} s (computed nothing)")

        big = load_config(make_project(Path(tmp) / "big"))
        current_root(big, args.shards)
        cold = DigestCache(Path(tmp) / "cold")
        first_verification = seconds(lambda: Project(big, digests=cold).statuses())
        decide = seconds(lambda: Project(big).statuses())
        verify = seconds(lambda: Project(big, digests=DigestCache(persistent=False)).statuses())
        assert all(s.current for *_, s in Project(big).statuses())
        partitions = len(Project(big).statuses())
        print(
            f"policy over {args.shards} shards ({partitions} artefact partitions, all current): {decide:.2f} s; "
            f"with no digest kept {first_verification:.2f} s; every file hashed (pretrace verify) {verify:.2f} s"
        )
    figures = {
        "rerun_vs_first_run": rerun / first,
        "policy_all_current_vs_first_run": decide / first,
        "policy_ms_per_shard": 1000 * decide / args.shards,
        "first_verification_vs_first_run": first_verification / first,
        "verify_vs_first_run": verify / first,
    }
    print("\n| figure | value |\n|---|---|")
    for name, value in figures.items():
        print(f"| `{name}` | {value:.3g} |")
    print()
    for name, value in figures.items():
        print(f"{name}: {value:.4g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
