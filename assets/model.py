"""The `model` asset: the checkpoint under study, recorded with a content fingerprint.

The fingerprint is the asset's data version, so a changed checkpoint marks everything
downstream stale in the UI. The demo variant trains a tiny model on the demo corpus instead.
"""


import tempfile
import time
from pathlib import Path

import dagster as dg

from pretrace.model import checkpoint_fingerprint, load_model
from pretrace.storage import Storage
from resources.settings import InfluenceResource, ModelResource, StorageResource

from .common import GPU_ASSET, MODEL_INFO_KEY, artefact_metadata
from .corpus import corpus_by_shard, corpus_files

DEMO_CHECKPOINT = "model/checkpoint"


def _record(store: Storage, path: str, model_settings: ModelResource, started: float) -> dg.MaterializeResult:
    """Load the checkpoint once to validate it, then write model/model.json."""
    fingerprint = checkpoint_fingerprint(path)
    lm = load_model(path, layers=model_settings.layers, device="cpu", trust_remote_code=model_settings.trust_remote_code)
    info = {
        "path": path,
        "fingerprint": fingerprint,
        "architecture": type(lm.model).__name__,
        "parameters": sum(p.numel() for p in lm.model.parameters()),
        "max_context": lm.max_context,
        "tracked_layers": [layer.name for layer in lm.layers],
        "tracked_parameters": sum(layer.d_in * layer.d_out for layer in lm.layers),
    }
    store.write_json(MODEL_INFO_KEY, info)
    layers_md = "\n".join(f"- `{layer.name}` ({layer.d_out} x {layer.d_in})" for layer in lm.layers)
    return dg.MaterializeResult(
        metadata={
            **artefact_metadata(store, MODEL_INFO_KEY, started=started),
            "checkpoint": path,
            "fingerprint": fingerprint,
            "architecture": info["architecture"],
            "parameters": info["parameters"],
            "tracked_parameters": info["tracked_parameters"],
            "tracked_layers": dg.MetadataValue.md(layers_md),
        },
        data_version=dg.DataVersion(fingerprint),
    )


@dg.asset(name="model", group_name="model", kinds={"pytorch"}, code_version="1")
def user_model(storage: StorageResource, model_settings: ModelResource) -> dg.MaterializeResult:
    """The Hugging Face checkpoint given by `model:` (a local folder or an s3:// URL)."""
    return _record(storage.open(), model_settings.model, model_settings, time.monotonic())


@dg.asset(name="model", deps=[corpus_files], group_name="model", kinds={"pytorch"}, code_version="1", **GPU_ASSET)
def demo_model(
    context: dg.AssetExecutionContext,
    storage: StorageResource,
    influence: InfluenceResource,
    model_settings: ModelResource,
) -> dg.MaterializeResult:
    """A tiny Llama and its BPE tokenizer, trained on the demo corpus (a few CPU minutes)."""
    from pretrace.demo.train import train_demo_model

    started = time.monotonic()
    store = storage.open()
    files = [Path(f.url) for f in corpus_by_shard(influence.corpus).values()]
    with tempfile.TemporaryDirectory(prefix="pretrace-demo-model-") as tmp:
        out = Path(tmp) / "checkpoint"

        def progress(step: int, total: int) -> None:
            if step % 25 == 0 or step == total:
                context.log.info(f"training the demo model: step {step}/{total}")

        train_demo_model(files, out, max_length=min(influence.max_length, 256), seed=influence.seed, progress=progress)
        for file in sorted(out.iterdir()):
            store.write_bytes(f"{DEMO_CHECKPOINT}/{file.name}", file.read_bytes())
        training = store.read_json(f"{DEMO_CHECKPOINT}/training.json")
    context.log.info(f"trained {training['steps']} steps; loss {training['initial_loss']:.2f} -> {training['final_loss']:.2f}")
    result = _record(store, store.url(DEMO_CHECKPOINT), model_settings, started)
    return dg.MaterializeResult(
        metadata={**result.metadata, "training_steps": training["steps"], "final_loss": training["final_loss"]},
        data_version=result.data_version,
    )
