"""`pretrace plan --gpu ...`: a study planned for named hardware from a model's config.json alone."""

import json
import re
from pathlib import Path

import pytest

from pretrace.pipeline.cli import main
from pretrace.testing.published_shapes import PUBLISHED_SHAPES


@pytest.fixture
def model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder holding Llama-2-7B's config.json and nothing else: no weights, no tokenizer."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / ".dagster_home"))
    folder = tmp_path / "llama-2-7b"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(PUBLISHED_SHAPES["Llama-2-7B"].to_dict()))
    return folder


def plan(*args: str) -> None:
    main(["plan", "--gpu", "h100-80gb", *args])


PAPER = ("--documents", "5000000", "--tokens-per-document", "500", "--queries", "80")


def test_a_config_json_alone_gets_a_plan_and_an_estimate_for_the_named_card(model: Path, tmp_path: Path, capsys):
    (tmp_path / "pretrace.yaml").write_text(
        f"model: {model}\ndtype: bfloat16\nmax_length: 2048\nprojection: [304, 304]\nprojection_basis: principal\n"
        "document_rank: 18\nstored_gradient_dtype: int4\nquery_rank: 64\nfit_documents: 0.1\n"
    )
    plan("--config", "pretrace.yaml", *PAPER)
    out = capsys.readouterr().out
    assert "target: 1 x h100-80gb (80 GB a GPU)" in out and "6.74B parameters, 96 tracked layers, bfloat16" in out
    assert "5,000,000 documents of 500 tokens (2.5B tokens" in out and "EK-FAC fitted on 500,000 of them" in out
    chosen = re.search(r"cheapest setting that fits: layer_groups: (\d+) \(fitting; ([^)]*)\), batch_size: (\d+)", out)
    assert chosen and f"memory plan ({chosen.group(1)} layer group" in out
    # the document pass holds the kept eigenvectors alone: ungrouped on 80 GB, whatever fitting needs
    assert chosen.group(2).endswith("document gradients in 1") and re.search(r"\n  scores +1 +\d", out)
    for stage in ("fit covariances", "eigendecomposition", "eigenvalue corrections", "query gradients"):
        assert re.search(rf"  {stage} +\d+\.\d", out), stage
    days = float(re.search(r"whole study +[\d.]+ +\(([\d.]+) GPU-days\)", out).group(1))
    assert 1 < days < 1000
    assert re.search(
        r"training step: [\d,]+ tokens/s at 1\.10B parameters \(gpu-\d{4}-\d\d-\d\d-h100[\w-]*\.json \(NVIDIA H100", out
    )


def test_a_store_beyond_the_disk_and_a_step_beyond_host_memory_are_refused_with_the_fix(model: Path, capsys):
    with pytest.raises(SystemExit) as refused:  # no projection: the exact store of 5M documents is petabytes
        plan("--model", str(model), *PAPER)
    assert re.fullmatch(
        r"pretrace: the study writes .* TB .*; set projection: \[\d+, \d+\] in pretrace.yaml .*", str(refused.value)
    )
    with pytest.raises(SystemExit) as refused:
        plan("--model", str(model), "--disk", "2PB", "--host-memory", "32GB", "--documents", "1000")
    message = str(refused.value)
    assert "step needs" in message and "GB of host memory" in message and "give the step pods at least" in message
    assert "\n" not in message


def test_hardware_flags_without_a_gpu_are_refused(model: Path):
    with pytest.raises(SystemExit, match="--model plans for named hardware: give --gpu too, e.g. --gpu h100-80gb"):
        main(["plan", "--model", str(model), "--documents", "10"])


def test_the_plan_for_this_machine_needs_no_weights_either(model: Path, tmp_path: Path, capsys):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "part.jsonl").write_text('{"id": "a", "text": "hello"}\n')
    (tmp_path / "queries.jsonl").write_text(
        '{"id": "q", "kind": "k", "prompt": "p", "completion": "c", "answer": "c"}\n'
    )
    (tmp_path / "pretrace.yaml").write_text(f"model: {model}\ndevice: cpu\n")
    main(["plan", "--config", "pretrace.yaml"])
    out = capsys.readouterr().out
    assert (
        "model: layer_groups: 1 (chosen by the plan)" in out and "peak " in out and "(covariances): no limit set" in out
    )
