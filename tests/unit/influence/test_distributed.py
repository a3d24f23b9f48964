"""Data parallel on torch.distributed: two gloo processes under torchrun fit the same factors
and store the same document gradients, in document order, as one process."""

import threading

import pytest
import torch
from safetensors import safe_open

from pretrace.errors import ConcurrentChange, InputError, PretraceError
from pretrace.influence.distributed import (
    Ranks,
    _raised,
    check_gpus_per_step,
    error_line,
    run_torchrun,
    visible_devices,
)
from pretrace.influence.document_gradients import DocumentGradients
from pretrace.influence.ekfac import CovarianceState, Factors, LambdaState
from pretrace.influence.query_gradients import query_gradients_from_tokens
from pretrace.influence.scores import score_matrix
from pretrace.model.adapter import wrap_model
from pretrace.testing.distributed_fit import BATCH_SIZE, DOCUMENTS, STORES, fit_and_store
from pretrace.testing.tiny import random_sequences, tiny_model

STATES = {"covariances": CovarianceState, "lambdas": LambdaState, "factors": Factors}


def load(folder, name, cls):
    with safe_open(folder / f"{name}.safetensors", framework="pt") as f:
        return cls.from_tensors({k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata()))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same fit and stores from one process (this one) and from two under torchrun."""
    one, two = tmp_path_factory.mktemp("one"), tmp_path_factory.mktemp("two")
    lines, failure = [], []

    def under_torchrun():
        try:
            run_torchrun("pretrace.testing.distributed_fit", [str(two)], 2, lines.append)
        except Exception as exc:  # raised in the test below, with the ranks' output
            failure.append(exc)

    child = threading.Thread(target=under_torchrun)
    child.start()
    fit_and_store(one)
    child.join(timeout=300)
    assert not failure and not child.is_alive(), "\n".join(lines[-30:])
    return one, two


def test_a_failing_rank_fails_the_launcher_with_its_last_line(tmp_path):
    (tmp_path / "taken").write_text("a file where the ranks' folder should be")
    with pytest.raises(
        PretraceError,
        match=r"torchrun \(gpus_per_step: 2\) of pretrace\.testing\.distributed_fit exited with status 1: .+",
    ):
        run_torchrun("pretrace.testing.distributed_fit", [str(tmp_path / "taken")], 2, lambda line: None)


def test_a_ranks_pretrace_error_is_raised_again_as_itself():
    line = error_line(InputError("layers: no layer matches 'mlpp'\nsee the list"))
    assert "\n" not in line
    error = _raised(line)
    assert type(error) is InputError and str(error) == "layers: no layer matches 'mlpp'\nsee the list"
    assert type(_raised(error_line(ConcurrentChange("x")))) is ConcurrentChange


def test_more_gpus_than_the_machine_has_are_refused_but_not_on_a_cpu():
    if visible_devices() < 3:
        with pytest.raises(InputError, match=r"gpus_per_step: 3 GPUs asked for a step but this machine has \d; lower"):
            check_gpus_per_step(3, "auto")
    check_gpus_per_step(3, "cpu")  # gloo processes: any count runs


def test_blocks_are_whole_batches_in_document_order_and_strides_cover_every_batch():
    blocks = [Ranks(r, 3).block(23, 4) for r in range(3)]  # 6 batches, the last one short
    assert blocks == [range(0, 8), range(8, 16), range(16, 23)]
    assert [Ranks(r, 4).block(5, 4) for r in range(4)] == [range(0, 4), range(4, 5), range(5, 5), range(5, 5)]
    assert [list(Ranks(r, 3).strided(range(7))) for r in range(3)] == [[0, 3, 6], [1, 4], [2, 5]]


def test_two_processes_fit_the_factors_of_one(runs):
    one, two = runs
    single, double = (load(d, "covariances", CovarianceState) for d in runs)
    assert (double.n_tokens, double.n_examples) == (single.n_tokens, single.n_examples)
    assert single.n_examples == DOCUMENTS
    for name in single.A:  # float32 terms summed in another order: float32 rounding of the sum
        for got, expected in ((double.A[name], single.A[name]), (double.S[name], single.S[name])):
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-6 * float(expected.abs().max()))
    lambdas = [load(d, "lambdas", LambdaState) for d in runs]
    assert lambdas[1].n_examples == lambdas[0].n_examples == DOCUMENTS
    for name, expected in lambdas[0].sums.items():
        torch.testing.assert_close(lambdas[1].sums[name], expected, rtol=1e-4, atol=1e-5 * float(expected.max()))
    factors = [load(d, "factors", Factors) for d in runs]
    V = {name: torch.randn(q.shape[0], factors[0].QA[name].shape[0]) for name, q in factors[0].QS.items()}
    for name in factors[0].layers:  # the preconditioner, whatever the eigenvectors' signs
        expected = factors[0].inverse_hvp(name, V[name])
        torch.testing.assert_close(
            factors[1].inverse_hvp(name, V[name]), expected, rtol=1e-3, atol=1e-4 * float(expected.abs().max())
        )
        assert factors[1].damping[name] == pytest.approx(factors[0].damping[name], rel=1e-5)


@pytest.mark.parametrize("store", list(STORES))
def test_two_processes_store_the_document_gradients_and_scores_of_one(runs, store):
    single, double = (load(d, store, DocumentGradients) for d in runs)
    assert double.ids == single.ids == [f"doc-{i}" for i in range(DOCUMENTS)]
    assert (double.rank, double.bits, double.dtype) == (single.rank, single.bits, single.dtype)
    for mapping in ("grads", "right", "scales"):
        ours, theirs = getattr(double, mapping), getattr(single, mapping)
        assert ours.keys() == theirs.keys()
        for name in theirs:  # the same batches, computed alike: the same bytes
            assert torch.equal(ours[name], theirs[name]), (mapping, name)
    assert torch.equal(double.losses, single.losses)
    lm = wrap_model(tiny_model("llama"), device="cpu")
    queries = random_sequences(3, seed=11)
    factors = load(runs[0], "factors", Factors)
    grads = query_gradients_from_tokens(lm, factors, queries, [3, 3, 3], ["a", "b", "c"], batch_size=BATCH_SIZE)
    torch.testing.assert_close(score_matrix(grads, double), score_matrix(grads, single), rtol=0, atol=0)
