"""Data parallel on torch.distributed: two gloo processes under torchrun fit the same factors
and store the same document gradients, in document order, as one process."""

import os
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open

from pretrace.influence.distributed import Ranks
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
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone"]
    child = subprocess.Popen(
        [*torchrun, "-m", "pretrace.testing.distributed_fit", str(two)],
        env=env | {"OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    fit_and_store(one)
    output, _ = child.communicate(timeout=300)
    assert child.returncode == 0, output[-3000:]
    return one, two


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
