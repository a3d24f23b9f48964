"""The `model` asset: the checkpoint under study, described and fingerprinted by content.

Its data version is the content fingerprint of that description, so a changed checkpoint (or a
changed `layers`) marks everything downstream stale. The demo variant stores a tiny model of the
demo corpus with the description: the one pretrace ships, or one trained here.
"""

import json
import shutil
import tempfile
import time
from pathlib import Path

import dagster as dg

from pretrace.demo.shipped_model import TRAINED_ON
from pretrace.project.computation import model_description
from pretrace.resources.pretrace import PretraceResource
from pretrace.store.fingerprint import tree_fingerprint

from .common import GPU_ASSET, computing, materialized, say
from .corpus import corpus_files

CHECKPOINT_DESCRIPTION = "The user's Hugging Face checkpoint (`model:`), versioned by the content of its files."


def checkpoint_source(model: str | None = None, group_name: str = "model") -> dg.SourceAsset:
    """The checkpoint as an observed source: the main model's, or compared model ``model``'s
    (keyed ``<model>/checkpoint``)."""

    @dg.observable_source_asset(
        name="checkpoint",
        key_prefix=[model] if model else None,
        group_name=group_name,
        description=CHECKPOINT_DESCRIPTION,
    )
    def checkpoint(pretrace: PretraceResource) -> dg.DataVersion:
        return dg.DataVersion(pretrace.project().compared(model).source("checkpoint"))

    return checkpoint


checkpoint = checkpoint_source()


def _metadata(info: dict) -> dict:
    layers = "\n".join(f"- `{layer['name']}` ({layer['d_out']} x {layer['d_in']})" for layer in info["tracked_layers"])
    return {
        "architecture": info["architecture"],
        "parameters": info["parameters"],
        "tracked_parameters": sum(layer["d_out"] * layer["d_in"] for layer in info["tracked_layers"]),
        "tracked_layers": dg.MetadataValue.md(layers),
    }


@dg.asset(name="model", deps=[checkpoint], group_name="model", kinds={"pytorch"})
def user_model(context: dg.AssetExecutionContext, pretrace: PretraceResource) -> dg.MaterializeResult:
    """The Hugging Face checkpoint given by `model:` (a local folder or an s3:// URL), validated."""
    started = time.monotonic()
    with computing(context, pretrace) as run:
        config = run.project.config
        info = model_description(config.model, run.expected.inputs["checkpoint"], config.layers, **config.loading)
        manifest = run.commit({"model.json": info})
    return materialized(run, manifest, started, checkpoint=config.model, **_metadata(info))


@dg.asset(name="model", deps=[corpus_files], group_name="model", kinds={"pytorch"}, **GPU_ASSET)
def demo_model(context: dg.AssetExecutionContext, pretrace: PretraceResource) -> dg.MaterializeResult:
    """A tiny Llama and its BPE tokenizer trained on the demo corpus: the shipped checkpoint when it
    was trained from this corpus with these settings, else trained here."""
    from pretrace.demo.shipped_model import reproduces_shipped, shipped_checkpoint, training_inputs
    from pretrace.demo.train import train_demo_model

    started = time.monotonic()
    with computing(context, pretrace) as run, tempfile.TemporaryDirectory(prefix="pretrace-demo-model-") as tmp:
        config = run.project.config
        files = [Path(run.project.corpus[s].url) for s in run.project.shards]
        max_length = min(config.max_length, 256)
        inputs = training_inputs(files, steps=config.demo_steps, seed=config.seed, max_length=max_length)
        shipped = None if config.demo_retrain else shipped_checkpoint(inputs)
        out = Path(tmp) / "checkpoint"
        if shipped is not None:
            shutil.copytree(shipped, out, ignore=shutil.ignore_patterns(TRAINED_ON))
            say(context, f"using the shipped demo model ({config.demo_steps} steps, trained from this corpus)")
        else:

            def progress(step: int, total: int) -> None:
                if step % 100 == 0 or step == total:
                    say(context, f"training the demo model: step {step}/{total}")

            train_demo_model(
                files, out, max_length=max_length, seed=config.seed, steps=config.demo_steps, progress=progress
            )
            same = reproduces_shipped(out, inputs)
            if same is not None:
                say(
                    context, f"training {'reproduced' if same else 'did NOT reproduce'} the shipped model byte for byte"
                )
        training = json.loads((out / "training.json").read_text(encoding="utf-8"))
        info = model_description(out, tree_fingerprint(str(out), run.project.digests), config.layers)
        outputs = {f"checkpoint/{f.name}": f for f in sorted(out.iterdir())}
        manifest = run.commit({**outputs, "model.json": info})
    say(
        context,
        f"trained {training['steps']} steps; loss {training['initial_loss']:.2f} -> {training['final_loss']:.2f}",
    )
    return materialized(
        run, manifest, started, training_steps=training["steps"], final_loss=training["final_loss"], **_metadata(info)
    )
