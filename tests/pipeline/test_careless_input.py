"""Every mistake a careless user makes ends `pretrace run` before any model work, with one
`pretrace:` line per problem naming the file (and line or record) and the fix, and no traceback
on the terminal; `pretrace check` finds the same without computing anything."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, BertConfig, BertForMaskedLM

from pretrace.config import load_config
from pretrace.model.hub_cache import checkpoint_folder
from pretrace.planning.memory_plan import GB, ModelShape, plan
from pretrace.project.computation import model_description
from pretrace.project.device_plan import workload
from pretrace.testing.project import QUERIES, edit_config, make_project, pretrace
from pretrace.testing.tiny import tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("template")
    make_project(root)
    return root


def _bert(root: Path) -> None:
    shutil.rmtree(root / "model")
    BertForMaskedLM(
        BertConfig(vocab_size=300, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    ).save_pretrained(root / "model")
    tiny_tokenizer().save_pretrained(root / "model")


def _pickled(root: Path) -> None:
    (root / "model" / "model.safetensors").unlink()
    torch.save(tiny_model("llama", seed=3).state_dict(), root / "model" / "pytorch_model.bin")


def _custom_code(root: Path) -> None:
    config = json.loads((root / "model" / "config.json").read_text())
    config |= {"model_type": "my-llama", "auto_map": {"AutoConfig": "mine.C", "AutoModelForCausalLM": "mine.M"}}
    (root / "model" / "config.json").write_text(json.dumps(config))


def _small_vocabulary(root: Path) -> None:
    tiny_model("llama", vocab_size=200).save_pretrained(root / "model")


def _append(path: str, *lines: str) -> Callable[[Path], None]:
    def change(root: Path) -> None:
        with (root / path).open("a") as f:
            f.write("".join(line + "\n" for line in lines))

    return change


def _replace(path: str, text: str) -> Callable[[Path], None]:
    return lambda root: (root / path).write_text(text)


def _config(**changes) -> Callable[[Path], None]:
    return lambda root: edit_config(root / "pretrace.yaml", **changes)


def _both(*changes: Callable[[Path], None]) -> Callable[[Path], None]:
    def change(root: Path) -> None:
        for one in changes:
            one(root)

    return change


LONG = " ".join(["Paris"] * 80)
CASES = {
    "encoder": (_bert, ["model: ", "is a BertForMaskedLM, not a causal language model", "...ForCausalLM"]),
    "pickle-only": (_pickled, ["only pickled weights (pytorch_model.bin)", "`allow_pickle: true`"]),
    "remote-code": (_custom_code, ["set `trust_remote_code: true` in pretrace.yaml only if you trust"]),
    "vocabulary": (_small_vocabulary, ["has 300 tokens but the model's embedding has 200 rows", "save the tokenizer"]),
    "surrogate": (
        _append("corpus/part-a.jsonl", '{"id": "s", "text": "bad \\ud800"}'),
        ["part-a.jsonl, line 15: `text` holds an unpaired surrogate", "write the character itself"],
    ),
    "all-empty": (
        _replace("corpus/part-c.jsonl", '{"id": "e1", "text": ""}\n{"id": "e2", "text": "  "}\n'),
        ["part-c.jsonl: every document's `text` is empty", "remove the file"],
    ),
    "float-id": (
        _append("corpus/part-b.jsonl", '{"id": 1.5, "text": "x"}'),
        ["part-b.jsonl, line 11: the `id` is a float (1.5)", "quote it"],
    ),
    "queries-json": (
        _append("queries.jsonl", '{"id": "x", "kind": "f"'),
        ["queries.jsonl, line 4: not valid JSON", "one JSON object"],
    ),
    "query-too-long": (
        _append("queries.jsonl", json.dumps({"id": "long", "kind": "f", "prompt": LONG, "completion": " x"})),
        ["queries.jsonl: query 'long': prompt+completion is", "longer than the model's context of 64", "shorten"],
    ),
    "answer-list": (
        _append(
            "queries.jsonl", json.dumps({"id": "l", "kind": "f", "prompt": "p", "completion": " c", "answer": ["x"]})
        ),
        ['queries.jsonl, line 4: `answer` is ["x"] (list)', "give the answer as a string or a number"],
    ),
    "queries-missing": (_config(queries="missing.jsonl"), ["missing.jsonl: no such file; correct the path"]),
    "storage-holds-the-inputs": (
        _config(storage="."),
        ["overlaps `model`", "give `storage` a folder of its own beside them"],
    ),
    "storage-in-the-checkpoint": (_config(storage="model/artefacts"), ["overlaps `model`", "pretrace would write"]),
    "device-memory": (
        _config(device_memory_gb=1e-4),
        [
            "the run needs",
            "GB of device memory at its smallest settings (batch_size 1, layer_groups 6, "
            "activation_checkpointing) but the device has 0.0001 GB; track fewer layers, shorten max_length, "
            "set factor_block_size for the widest layers",
        ],
    ),
    "fit-shards": (
        _config(fit_shards=["nope.jsonl"]),
        ["fit_shards: 'nope.jsonl' is not a shard of", "the shards are: part-a.jsonl, part-b.jsonl"],
    ),
    "two-problems": (
        _both(
            _append("queries.jsonl", '{"id": 5, "kind": "f", "prompt": "p", "completion": "c"}'),
            _append("corpus/part-b.jsonl", '{"text": "no id"}'),
        ),
        ["queries.jsonl, line 4: `id` is int 5", "part-b.jsonl, line 11: the record has no `id`"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_careless_input_is_named_before_any_model_work(template: Path, tmp_path: Path, case: str) -> None:
    root = tmp_path / "project"
    shutil.copytree(template, root)
    change, expected = CASES[case]
    change(root)
    result = pretrace("run", "--config", "pretrace.yaml", cwd=root)
    terminal = result.stdout + result.stderr
    assert result.returncode == 1, terminal[-3000:]
    assert "Traceback" not in terminal and "STEP_FAILURE" not in terminal and "Warning" not in terminal, terminal[
        -3000:
    ]
    errors = [line for line in result.stderr.splitlines() if line.startswith("pretrace: ")]
    last = result.stderr.rstrip().splitlines()[-1]
    assert last == errors[-1]
    for part in expected:
        assert any(part in line for line in errors), f"{part!r} not in {errors}"
    assert "materializing" not in result.stdout  # nothing at all was computed, EK-FAC least of all
    assert not (root / "data" / "ekfac_covariances").exists()
    assert "the full trace is in" in result.stderr


def test_check_validates_without_computing_and_lists_skipped_files(template: Path, tmp_path: Path) -> None:
    root = tmp_path / "project"
    shutil.copytree(template, root)
    (root / "corpus" / "notes.json").write_text("{}")
    result = pretrace("check", "--config", "pretrace.yaml", cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "warning: " in result.stdout and "skipped notes.json: not a corpus file" in result.stdout
    assert "every input is usable" in result.stdout
    assert not (root / "data").exists() or not any((root / "data").iterdir())
    _bert(root)
    result = pretrace("check", "--config", "pretrace.yaml", cwd=root)
    assert result.returncode == 1 and "not a causal language model" in result.stderr.splitlines()[-1]


def test_the_plan_chooses_layer_groups_that_fit_or_names_the_setting_that_would(template: Path, tmp_path: Path) -> None:
    root = tmp_path / "project"
    shutil.copytree(template, root)
    config = load_config(root / "pretrace.yaml")
    shape = ModelShape.of_config(AutoConfig.from_pretrained(root / "model"), config.layers)
    work = workload(config, documents=0, queries=len(QUERIES))
    whole, apart = (plan(shape, replace(work, layer_groups=g)).peak.device for g in (1, len(shape.layers)))
    edit_config(root / "pretrace.yaml", device_memory_gb=(whole + apart) / 2 / GB)  # fits in groups only
    result = pretrace("plan", "--config", "pretrace.yaml", cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    groups = int(re.search(r"model: layer_groups: (\d+) \(chosen by the plan\)", result.stdout).group(1))
    assert 1 < groups <= len(shape.layers) and f"memory plan ({groups} layer groups)" in result.stdout
    edit_config(root / "pretrace.yaml", layer_groups=1)  # a fixed number that does not fit is refused
    result = pretrace("plan", "--config", "pretrace.yaml", cwd=root)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"set layer_groups: {groups} in pretrace.yaml (layer groups give the same results" in result.stderr


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A file system of 300 KB of its own (a tmpfs): a storage root whose disk fills up."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_full_disk_is_one_line_and_leaves_nothing_half_written(tmp_path: Path, small_disk: Path) -> None:
    make_project(tmp_path / "project", storage=str(small_disk / "data"))
    done = pretrace("run", "--config", "pretrace.yaml", cwd=tmp_path / "project")
    assert done.returncode == 1
    said = [line for line in done.stderr.splitlines() if line.startswith("pretrace:")]
    assert len(said) == 1, done.stderr[-3000:]
    assert re.fullmatch(
        rf"pretrace: no space left on the device while writing {re.escape(str(small_disk))}/data/\S+; free space "
        r"there or point `storage` at a larger disk, then run again \(nothing half-written was kept\)",
        said[0],
    )
    assert [p.name for p in (small_disk / "data").rglob(".pretrace-tmp.*")] == []


def hub_cache_with(model: Path, cache: Path, repo_id: str, commit: str) -> Path:
    """A Hugging Face cache laid out by hand, as `huggingface-cli download` leaves it: blobs,
    refs/main naming the commit, and a snapshot of symlinks."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for file in model.iterdir():
        blob = repo / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copyfile(file, blob)
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def test_a_model_named_by_its_hugging_face_id_is_found_in_the_local_cache(template: Path, tmp_path: Path) -> None:
    root = tmp_path / "project"
    shutil.copytree(template, root)
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = hub_cache_with(root / "model", tmp_path / "hub", "acme/tiny-llama", commit)
    shutil.rmtree(root / "model")
    edit_config(root / "pretrace.yaml", model="acme/tiny-llama")
    env = {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    checked = pretrace("check", "--config", "pretrace.yaml", cwd=root, env=env)
    assert checked.returncode == 0, checked.stderr[-3000:]
    config = load_config(root / "pretrace.yaml")
    assert config.model == "acme/tiny-llama"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
        assert checkpoint_folder(config.model) == str(snapshot)
        assert model_description(config.model, "f", ["mlp"])["hub_revision"] == commit
    edit_config(root / "pretrace.yaml", model="acme/not-downloaded")
    missing = pretrace("check", "--config", "pretrace.yaml", cwd=root, env=env)
    assert missing.returncode == 1
    assert (
        missing.stderr.rstrip()
        .splitlines()[-1]
        .startswith(
            "pretrace: model: acme/not-downloaded is neither a folder nor a model in the local Hugging Face cache"
        )
    )
