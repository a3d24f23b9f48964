"""Which configuration a code location runs: a user's pretrace.yaml, or the embedded demo."""

from __future__ import annotations

import os
from pathlib import Path

from pretrace.config import PretraceConfig, load_config

CONFIG_ENV = "PRETRACE_CONFIG"
DEMO_DIR_ENV = "PRETRACE_DEMO_DIR"


def demo_config(root: str | os.PathLike = ".", storage: str | None = None) -> PretraceConfig:
    """The demo: corpus and queries built under <root>/demo-data, artefacts under <root>/data.

    Documents are at most 256 tokens (the demo model's context) and gradients are projected to
    32 x 32 per layer, so the stored document gradients of the whole corpus stay small.
    """
    root = Path(root).absolute()
    data = root / "demo-data"
    return PretraceConfig(
        model=str(data / "model-unused"),
        corpus=str(data / "corpus"),
        queries=str(data / "queries.jsonl"),
        storage=storage or str(root / "data"),
        max_length=256,
        batch_size=16,
        projection=(32, 32),
        top_k=20,
    )


def workspace_config() -> tuple[PretraceConfig, bool]:
    """(config, is_demo) for `dagster dev`: $PRETRACE_CONFIG if set, else the demo."""
    path = os.environ.get(CONFIG_ENV)
    if path:
        return load_config(path), False
    return demo_config(os.environ.get(DEMO_DIR_ENV, ".")), True


LOCAL_INSTANCE = {
    # Runs wait in a queue instead of all starting at once on a laptop; GPU-heavy steps (the
    # `gpu` pool: fitting passes, gradients) run one at a time; a run that dies frees its slot.
    "concurrency": {"runs": {"max_concurrent_runs": 2}, "pools": {"default_limit": 1, "granularity": "op"}},
    "run_monitoring": {"enabled": True, "free_slots_after_run_end_seconds": 30},
    "telemetry": {"enabled": False},
}
"""The dagster.yaml `pretrace demo|run|ui` write into a new $DAGSTER_HOME (infra/dagster.yaml is
the team deployment's)."""
