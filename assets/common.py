"""What every asset shares: artefact keys, progress logging, metadata, the model and projection."""


import os
import time
from typing import Callable

import dagster as dg
import pyarrow as pa

from pretrace.config import PretraceConfig
from pretrace.model import LoadedModel
from pretrace.projection import KroneckerProjection
from pretrace.storage import Storage
from resources.settings import ComputeResource, ModelResource, loaded_model

from .k8s import GPU_OP_TAGS

GPU_POOL = "gpu"
# What every GPU-heavy asset declares: the concurrency pool, and a GPU for its pod on Kubernetes.
GPU_ASSET = {"pool": GPU_POOL, "op_tags": GPU_OP_TAGS}
MODEL_INFO_KEY = "model/model.json"
PROGRESS_INTERVAL_ENV = "PRETRACE_PROGRESS_INTERVAL_S"


def shard_key_of(asset: str, shard: str, suffix: str = "safetensors") -> str:
    """Artefacts are laid out as <asset>/<shard>.<suffix> under the storage root."""
    return f"{asset}/{shard}.{suffix}"


def seconds_from_env(name: str, default: float, minimum: float = 0.0) -> float:
    """A duration from the environment, for knobs that tests and small deployments turn down."""
    value = os.environ.get(name)
    if not value:
        return default
    try:
        return max(minimum, float(value))
    except ValueError:
        raise ValueError(f"${name}={value!r} is not a number of seconds") from None


def progress_interval() -> float:
    """Seconds between progress lines in run logs: short to watch small runs, long to keep big
    runs' event logs lean."""
    return seconds_from_env(PROGRESS_INTERVAL_ENV, 10.0)


def progress_logger(context: dg.AssetExecutionContext, total: int, what: str) -> Callable[[int], None]:
    """A callback that logs counts and an ETA every `progress_interval()` seconds and at the end."""
    start = time.monotonic()
    every = progress_interval()
    state = {"done": 0, "logged": start}

    def advance(n: int) -> None:
        state["done"] += n
        now = time.monotonic()
        if now - state["logged"] < every and state["done"] < total:
            return
        state["logged"] = now
        rate = state["done"] / max(now - start, 1e-9)
        eta = (total - state["done"]) / rate if rate > 0 else float("inf")
        context.log.info(f"{what}: {state['done']}/{total} ({rate:.1f}/s, ETA {eta:.0f} s)")

    return advance


def artefact_metadata(storage: Storage, *keys: str, started: float) -> dict:
    """Where the outputs are, how big, and how long it took."""
    return {
        "paths": dg.MetadataValue.json([storage.url(k) for k in keys]),
        "bytes": sum(storage.size(k) for k in keys),
        "seconds": round(time.monotonic() - started, 2),
    }


def markdown_preview(table: pa.Table, columns: list[str], rows: int = 10, width: int = 80) -> dg.MetadataValue:
    """A short Markdown table for the UI, cells cut to `width` characters."""
    head = table.select(columns).slice(0, rows).to_pylist()
    clean = lambda v: str(v).replace("|", "\\|").replace("\n", " ")[:width]  # noqa: E731
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(clean(row[c]) for c in columns) + " |" for row in head]
    return dg.MetadataValue.md("\n".join(lines))


def model_for(storage: Storage, model: ModelResource, compute: ComputeResource) -> LoadedModel:
    """The checkpoint recorded by the `model` asset, loaded once per process."""
    if not storage.exists(MODEL_INFO_KEY):
        raise dg.Failure("the `model` asset has not been materialized yet: materialize it first")
    info = storage.read_json(MODEL_INFO_KEY)
    return loaded_model(info["path"], info["fingerprint"], model, compute)


def projection_for(config: PretraceConfig, lm: LoadedModel) -> KroneckerProjection | None:
    if config.projection is None:
        return None
    k_out, k_in = config.projection
    return KroneckerProjection.build(lm.layer_shapes(), k_out, k_in, seed=config.seed)


def shard_sequences(storage: Storage, shard: str) -> tuple[list[str], list[list[int]]]:
    """Document ids and token ids of a tokenized shard."""
    key = shard_key_of("corpus_shards", shard, "parquet")
    if not storage.exists(key):
        raise dg.Failure(f"corpus_shards has no partition {shard!r} yet: materialize corpus_shards[{shard}] first")
    table = storage.read_parquet(key, columns=["doc_id", "input_ids"])
    return table.column("doc_id").to_pylist(), table.column("input_ids").to_pylist()
