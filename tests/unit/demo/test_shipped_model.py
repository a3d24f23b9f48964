"""The shipped demo model: used only for the inputs it was trained from, refused when damaged,
and reproduced by training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pretrace.config import PretraceConfig
from pretrace.demo import train
from pretrace.demo.corpus import build_demo_corpus
from pretrace.demo.files import write_records
from pretrace.demo.queries import KINDS
from pretrace.demo.shipped_model import (
    SHIPPED,
    TRAINED_ON,
    reproduces_shipped,
    ship,
    shipped_checkpoint,
    training_inputs,
)
from pretrace.demo.train import train_demo_model
from pretrace.errors import InputError

STEPS = 3


@pytest.fixture
def shard(tmp_path: Path) -> Path:
    records = [{"id": str(i), "text": f"Record {i} says {i * 7 % 13} apples.", "source": "prose"} for i in range(120)]
    return write_records(tmp_path / "corpus.jsonl", records)


def _train(shard: Path, out: Path) -> dict[str, object]:
    train_demo_model([shard], out, max_length=32, steps=STEPS, batch_size=4)
    return training_inputs([shard], steps=STEPS, seed=0, max_length=32, batch_size=4)


def test_a_shipped_model_is_used_for_its_own_inputs_only_and_training_reproduces_it(shard, tmp_path, monkeypatch):
    inputs = _train(shard, tmp_path / "trained")
    shipped = tmp_path / "shipped" / "model"
    shipped.parent.mkdir()
    ship(tmp_path / "trained", inputs, {"prose": "0/0"}, shipped)
    assert shipped_checkpoint(inputs, shipped) == shipped
    assert shipped_checkpoint({**inputs, "steps": STEPS + 1}, shipped) is None
    assert reproduces_shipped(tmp_path / "trained", inputs, shipped) is True

    inputs_again = _train(shard, tmp_path / "again")
    assert inputs_again == inputs and reproduces_shipped(tmp_path / "again", inputs, shipped) is True

    other = write_records(tmp_path / "other.jsonl", [{"id": "x", "text": "Another text entirely. " * 40}])
    assert training_inputs([other], steps=STEPS, seed=0, max_length=32, batch_size=4) != inputs
    monkeypatch.setitem(train.EPOCH_COPIES, "prose", 2)  # a change to the recipe: never the old model
    assert (
        shipped_checkpoint(training_inputs([shard], steps=STEPS, seed=0, max_length=32, batch_size=4), shipped) is None
    )


def test_a_damaged_shipped_model_is_refused_with_the_fix(shard, tmp_path):
    inputs = _train(shard, tmp_path / "trained")
    shipped = tmp_path / "model"
    ship(tmp_path / "trained", inputs, {}, shipped)
    weights = shipped / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # same size, one bit off
    weights.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"not the bytes trained_on.json records; reinstall.*--retrain"):
        shipped_checkpoint(inputs, shipped)


def test_the_shipped_model_was_trained_from_the_demo_as_it_is_and_records_its_answers(tmp_path):
    """Fails when the demo's corpus or training changed without `python -m
    pretrace.evaluation.ship_demo_model`: the demo would then train for minutes instead."""
    defaults = PretraceConfig()
    files = build_demo_corpus(tmp_path / "corpus")
    inputs = training_inputs(files, steps=defaults.demo_steps, seed=defaults.seed, max_length=256)
    assert shipped_checkpoint(inputs) == SHIPPED
    answers = json.loads((SHIPPED / TRAINED_ON).read_text())["answers_correct"]
    assert set(KINDS) <= set(answers) and all(int(a.split("/")[0]) <= int(a.split("/")[1]) for a in answers.values())
