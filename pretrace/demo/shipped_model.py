"""The demo model pretrace ships: trained once, long enough to answer its own queries, and
copied into the demo instead of trained again, when the demo would train exactly that model.

Training the demo model for the steps that make it answer most of its queries takes far longer
than the rest of the demo on a laptop. So the trained checkpoint ships in
``pretrace/demo/data/model`` with ``trained_on.json``: what it was trained from (a digest of the
corpus texts in training order, the steps, seed and context) and the SHA-256 of every file. The
demo copies it only when its own training inputs are the same and every file's bytes match; any
other case trains, and ``pretrace demo --retrain`` trains anyway and says whether training
reproduced the shipped bytes. ``python -m pretrace.evaluation.ship_demo_model`` retrains and
reships it after a change to the demo's corpus or training.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from pretrace.demo.train import training_recipe
from pretrace.errors import InputError
from pretrace.inputs.corpus import read_records

SHIPPED = Path(__file__).parent / "data" / "model"
TRAINED_ON = "trained_on.json"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def training_inputs(
    corpus_files: list[Path], *, steps: int, seed: int, max_length: int, batch_size: int = 8
) -> dict[str, object]:
    """What a demo model is a function of: the corpus texts in the order training reads them
    (not the files' bytes, which a Parquet writer's version changes), the steps, seed and context,
    and the training recipe (model shape, learning rate, copies per source...)."""
    digest = hashlib.sha256()
    for path in corpus_files:
        for record in read_records(str(path)):
            digest.update(json.dumps([record["text"], record.get("source")]).encode())
    return {
        "corpus_texts_sha256": digest.hexdigest(),
        "steps": steps,
        "seed": seed,
        "max_length": max_length,
        "recipe": training_recipe(batch_size),
    }


def file_hashes(checkpoint: Path) -> dict[str, str]:
    """SHA-256 of every file of a checkpoint folder, by name."""
    return {p.name: _sha256(p) for p in sorted(checkpoint.iterdir()) if p.is_file() and p.name != TRAINED_ON}


def _record(shipped: Path) -> dict | None:
    """What the shipped checkpoint records about itself (None when none ships)."""
    try:
        return json.loads((shipped / TRAINED_ON).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


def shipped_checkpoint(inputs: dict[str, object], shipped: Path = SHIPPED) -> Path | None:
    """The shipped checkpoint folder when it was trained from ``inputs``, else None; a shipped
    checkpoint whose files are not the bytes it records is refused (reinstall, or retrain)."""
    record = _record(shipped)
    if record is None or record["inputs"] != inputs:
        return None
    if file_hashes(shipped) != record["files"]:
        raise InputError(
            f"{shipped}: the shipped demo model's files are not the bytes {TRAINED_ON} records; reinstall "
            "pretrace, or train the model with `pretrace demo --retrain`"
        )
    return shipped


def reproduces_shipped(checkpoint: Path, inputs: dict[str, object], shipped: Path = SHIPPED) -> bool | None:
    """Whether a freshly trained checkpoint is, byte for byte, the shipped one of the same inputs
    (None when none ships for them)."""
    record = _record(shipped)
    if record is None or record["inputs"] != inputs:
        return None
    return record["files"] == file_hashes(checkpoint)


def ship(checkpoint: Path, inputs: dict[str, object], answers: dict[str, str], shipped: Path = SHIPPED) -> None:
    """Replace the shipped checkpoint with ``checkpoint`` trained from ``inputs`` (whole: a
    temporary folder renamed into place); ``answers``: its greedy answers' correctness per kind."""
    tmp = Path(tempfile.mkdtemp(prefix=".model-", dir=shipped.parent))
    for path in sorted(checkpoint.iterdir()):
        shutil.copy2(path, tmp / path.name)
    record = {"inputs": inputs, "files": file_hashes(tmp), "answers_correct": answers}
    (tmp / TRAINED_ON).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    old = shipped.with_name(".model-old")
    if shipped.exists():
        os.replace(shipped, old)
    os.replace(tmp, shipped)
    shutil.rmtree(old, ignore_errors=True)
