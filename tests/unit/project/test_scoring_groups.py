"""The scoring computations take the fewest layer groups their own steps fit in, while the EK-FAC
fitting chain keeps `layer_groups` (or the fewest its steps fit in when unset)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from pretrace.config import PretraceConfig
from pretrace.demo.files import write_records
from pretrace.planning.memory_plan import GB, ModelShape, plan
from pretrace.project.computation import Computation
from pretrace.project.device_plan import workload
from pretrace.testing.project import QUERIES
from pretrace.testing.tiny import tiny_model

FITTING = ("covariances", "eigenbasis", "lambdas")


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", seed=3)


def groups_of(config: PretraceConfig, model, artefact: str) -> tuple[int, list[str]]:
    """`Computation.layer_groups` of ``artefact`` (its inputs need not exist: only the plan is asked)."""
    logged: list[str] = []
    run = object.__new__(Computation)
    run.project, run.artefact, run.group = SimpleNamespace(config=config), SimpleNamespace(name=artefact), None
    run.log, run._groups = logged.append, None
    return run.layer_groups(SimpleNamespace(model=model)), logged


def test_scoring_takes_fewer_groups_than_fitting_under_a_tight_device_budget(model, tmp_path: Path):
    write_records(tmp_path / "queries.jsonl", QUERIES)
    settings = dict(model="m", corpus="c", queries=str(tmp_path / "queries.jsonl"), device="cpu")
    settings |= dict(batch_size=4, max_length=32, projection=(4, 4))
    shape = ModelShape.of_model(model, model.config, PretraceConfig(**settings).layers)
    work = workload(PretraceConfig(**settings), documents=0, queries=len(QUERIES))

    def peak(groups: int, steps: tuple[str, ...]) -> int:
        planned = plan(shape, replace(work, layer_groups=groups, partitioned_groups=groups > 1))
        return max(step.device for step in planned.steps if step.name in steps)

    whole, apart = peak(1, FITTING), max(peak(2, FITTING), peak(1, ("query_gradients", "scores")))
    assert apart < whole  # the fitting chain needs 2 groups where every scoring step fits in 1
    for layer_groups in (None, 2):  # chosen by the plan, or set: scoring takes the fewest that fit either way
        tight = PretraceConfig(**settings, device_memory_gb=(whole + apart) / 2 / GB, layer_groups=layer_groups)
        assert groups_of(tight, model, "ekfac_covariances")[0] == 2
        for artefact in ("query_gradients", "document_gradients", "influence_scores", "reranked_scores"):
            groups, logged = groups_of(tight, model, artefact)
            assert groups == 1 and logged[-1].endswith(f"{artefact} in 1 layer group (the fewest its own steps fit in)")
    free = PretraceConfig(**settings, layer_groups=2)  # no device budget on a CPU: scoring ungrouped
    assert groups_of(free, model, "ekfac_lambdas")[0] == 2 and groups_of(free, model, "document_gradients")[0] == 1
