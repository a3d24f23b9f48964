"""Configuration: documented defaults, YAML forms and round trip, errors, path resolution."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from pretrace.config import Damping, PretraceConfig, load_config, parse_config
from pretrace.errors import InputError

DOCUMENTED_DEFAULTS = """\
model: ./checkpoints/my-model
corpus: ./corpus
queries: ./queries.jsonl
storage: ./data
layers: ["mlp"]
fisher: sampled
damping: 0.1
projection: none
query_rank: null
max_length: 512
batch_size: 8
fit_shards: all
device: auto
dtype: float32
trust_remote_code: false
seed: 0
top_k: 50
"""


def write(tmp_path: Path, text: str, name: str = "pretrace.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_match_the_documented_yaml(tmp_path: Path) -> None:
    config = PretraceConfig()
    assert parse_config(None, "defaults") == config
    assert load_config(write(tmp_path, DOCUMENTED_DEFAULTS)) == load_config(write(tmp_path, "", "empty.yaml"))
    assert config.damping == Damping(relative=0.1) and config.damping.resolve(2.0) == pytest.approx(0.2)
    assert config.projection is None and config.fit_shards == "all" and config.layers == ["mlp"]
    assert (config.trust_remote_code, config.seed, config.top_k) == (False, 0, 50)


def test_yaml_forms_and_round_trip(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            """\
damping: {absolute: 1.0e-3}
projection: [64, 32]
query_rank: 16
fit_shards: [shard-a.jsonl, shard-b.jsonl]
layers: ['mlp\\.c_fc', 'down_proj']
fisher: empirical
dtype: bfloat16
storage: s3://bucket/runs/1
""",
        )
    )
    assert config.damping.absolute == 1e-3 and config.damping.relative is None
    assert config.damping.resolve(5.0) == 1e-3
    assert config.projection == (64, 32)
    assert config.fit_shards == ["shard-a.jsonl", "shard-b.jsonl"]
    assert load_config(write(tmp_path, config.to_yaml(), "again.yaml")) == config
    assert "damping:\n  absolute: 0.001\n" in config.to_yaml()
    assert "projection: none" in PretraceConfig().to_yaml()


def test_pyyaml_exponent_without_dot_is_a_number(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "damping: 1e-2\n")).damping.relative == 0.01


def test_unknown_key_suggests_the_closest(tmp_path: Path) -> None:
    path = write(tmp_path, "dampnig: 0.1\nmax_lenght: 128\nzzz: 1\n")
    with pytest.raises(InputError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(str(path))
    assert "`dampnig` is not a setting; did you mean `damping`?" in message
    assert "`max_lenght` is not a setting; did you mean `max_length`?" in message
    assert "`zzz` is not a setting; valid keys: model, corpus" in message


@pytest.mark.parametrize(
    "text, key",
    [
        ("damping: -0.1", "damping"),
        ("damping: 0", "damping"),
        ("damping: {absolute: -1}", "damping"),
        ("damping: {absolut: 1}", "damping"),
        ("damping: .nan", "damping"),
        ("projection: [64]", "projection"),
        ("projection: [64, 0]", "projection"),
        ("projection: [64, 2.5]", "projection"),
        ("projection: yes", "projection"),
        ("fisher: emprical", "fisher"),
        ("device: gpu", "device"),
        ("dtype: fp8", "dtype"),
        ("max_length: 1", "max_length"),
        ("batch_size: 0", "batch_size"),
        ("query_rank: -3", "query_rank"),
        ("fit_shards: []", "fit_shards"),
        ("fit_shards: some", "fit_shards"),
        ("layers: []", "layers"),
        ("layers: ['mlp(']", "layers"),
        ("trust_remote_code: maybe", "trust_remote_code"),
        ("top_k: 2.5", "top_k"),
        ("projection_floor: 1.5", "projection_floor"),
        ("projection_floor: 0", "projection_floor"),
        ("projection_floor: high", "projection_floor"),
        ("demo_steps: 0", "demo_steps"),
    ],
)
def test_bad_values_name_file_and_key(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path, text + "\n")
    with pytest.raises(InputError, match=re.escape(f"{path}: invalid configuration\n  - `{key}`: ")):
        load_config(path)


BOUNDED = (
    "max_length",
    "batch_size",
    "query_rank",
    "document_rank",
    "layer_groups",
    "factor_block_size",
    "seed",
    "top_k",
    "tail_patch_k",
    "completion_tokens",
    "demo_steps",
)


@pytest.mark.parametrize("value", [2**64, 10**10])
@pytest.mark.parametrize("key", BOUNDED)
def test_every_count_is_bounded_when_the_config_loads(tmp_path: Path, key: str, value: int) -> None:
    """A count no run could use (a typo, an overflow) is refused at load, naming its bound."""
    path = write(tmp_path, f"{key}: {value}\n")
    with pytest.raises(InputError, match=re.escape(f"`{key}`: Input should be less than or equal to")):
        load_config(path)


def test_a_projection_side_is_bounded(tmp_path: Path) -> None:
    path = write(tmp_path, f"projection: [64, {2**64}]\n")
    with pytest.raises(
        InputError, match=re.escape('`projection`: must be "none" or [k_out, k_in], two integers from 1 to 65536')
    ):
        load_config(path)


@pytest.mark.parametrize(
    "text, pattern",
    [
        ("damping: [0.1\n", r"not valid YAML"),
        ("- model\n", r"expected `key: value` settings"),
        ("seed: 1\nseed: 2\n", r"`seed` is set twice"),
    ],
)
def test_unparsable_files(tmp_path: Path, text: str, pattern: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(InputError, match=re.escape(str(path)) + ".*" + pattern):
        load_config(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="configuration file not found"):
        load_config(tmp_path / "nope.yaml")


def test_relative_paths_resolve_against_the_yaml_folder(tmp_path: Path, monkeypatch) -> None:
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(tmp_path)  # the cwd must not matter
    config = load_config(write(project, "model: ../models/m\ncorpus: s3://bucket/corpus\nqueries: /abs/q.jsonl\n"))
    assert config.model == str(tmp_path / "models" / "m")
    assert config.corpus == "s3://bucket/corpus"
    assert config.queries == "/abs/q.jsonl"
    assert config.storage == str(project / "data")  # defaults are relative to the file too
    assert config.resolve_paths("/elsewhere") == config  # already absolute: unchanged
    assert os.path.isabs(PretraceConfig().resolve_paths(tmp_path).model)


def test_config_is_immutable() -> None:
    with pytest.raises(ValidationError):
        PretraceConfig().seed = 3  # type: ignore[misc]


def test_a_quantized_store_is_never_taken_for_exact_scores(tmp_path: Path) -> None:
    factored = load_config(write(tmp_path, "stored_gradient_dtype: int4\ndocument_rank: 2\n"))
    assert (factored.stored_gradient_dtype, factored.document_rank) == ("int4", 2) and not factored.stores_exact_scores
    assert PretraceConfig().stores_exact_scores
    for dtype in ("bfloat16", "int8", "int4"):  # rounded stored scores are re-scored exactly like projected ones
        assert not PretraceConfig(stored_gradient_dtype=dtype).stores_exact_scores
