"""Which configuration a code location runs: a user's pretrace.yaml, or the embedded demo."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from pretrace.config import PretraceConfig, load_config, parse_config
from pretrace.errors import InputError

CONFIG_ENV = "PRETRACE_CONFIG"
DEMO_DIR_ENV = "PRETRACE_DEMO_DIR"
DEMO_SETTINGS = "settings.json"
"""In <root>/demo-data: what `pretrace demo --steps / --retrain / --compare-seeds` chose, so `pretrace ui` and later runs of
the same folder see the same demo (and do not call its model stale)."""
_DEMO_KEYS = ("demo_steps", "demo_retrain", "compare_models")


def demo_config(root: str | os.PathLike = ".", storage: str | None = None) -> PretraceConfig:
    """The demo: corpus and queries built under <root>/demo-data, artefacts under <root>/data.

    Documents are at most 256 tokens (the demo model's context). Each document's gradient is
    rotated into each layer's EK-FAC eigenbasis, kept whole (512 x 512 covers both sides of its
    512 x 128 layers) and stored in int4: 7.6x smaller than dense float32, with a mean per-query
    Pearson of 0.997 against exact scores on the shipped model, where the 64x stores (304 x 304
    principal blocks as rank-18 factors) keep 0.812 and rank-24 factors of the whole block 0.948
    (docs/performance.md, "Projection accuracy").
    """
    root = Path(root).absolute()
    data = root / "demo-data"
    config = PretraceConfig(
        model=str(data / "model-unused"),
        corpus=str(data / "corpus"),
        queries=str(data / "queries.jsonl"),
        storage=storage or str(root / "data"),
        max_length=256,
        batch_size=16,
        projection=(512, 512),
        stored_gradient_dtype="int4",
        top_k=20,
        fit_documents=0.25,  # the factors from a seeded quarter of the chunks, as the paper fitted on a sample
        completion_tokens=96,  # the longest worked solution is 66 tokens: room to finish, not to ramble
    )
    chosen = _demo_settings(data / DEMO_SETTINGS)
    return parse_config({**config.model_dump(mode="json"), **chosen}, str(data / DEMO_SETTINGS)) if chosen else config


def save_demo_settings(root: str | os.PathLike, **settings: object) -> None:
    """Record the demo's own settings next to its data (written whole: temporary name, rename)."""
    path = Path(root).absolute() / "demo-data" / DEMO_SETTINGS
    merged = {**_demo_settings(path), **settings}
    parse_config({**PretraceConfig().model_dump(mode="json"), **merged}, "pretrace demo")  # refuse before writing
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(merged, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _demo_settings(path: Path) -> dict:
    try:
        chosen = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc}); delete it to use the demo's defaults") from None
    if not isinstance(chosen, dict) or set(chosen) - set(_DEMO_KEYS):
        raise InputError(
            f"{path}: expected an object with only {', '.join(_DEMO_KEYS)}; delete it to use the demo's defaults"
        )
    return chosen


def workspace_config(env: Mapping[str, str] = os.environ) -> tuple[PretraceConfig, bool]:
    """(config, is_demo) for `dagster dev`: $PRETRACE_CONFIG if set, else the demo; ``env``: the
    environment `dagster dev` is given (`pretrace ui` serves the report of the same project)."""
    path = env.get(CONFIG_ENV)
    if path:
        return load_config(path), False
    return demo_config(env.get(DEMO_DIR_ENV, ".")), True


LOCAL_INSTANCE = {
    # Runs wait in a queue instead of all starting at once on a laptop; GPU-heavy steps (the
    # `gpu` pool: fitting passes, gradients) run one at a time; a run that dies frees its slot.
    "concurrency": {"runs": {"max_concurrent_runs": 2}, "pools": {"default_limit": 1, "granularity": "op"}},
    "run_monitoring": {"enabled": True, "free_slots_after_run_end_seconds": 30},
    "telemetry": {"enabled": False},
}
"""The dagster.yaml `pretrace demo|run|ui` write into a new $DAGSTER_HOME (infra/dagster.yaml is
the team deployment's)."""
