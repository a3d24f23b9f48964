"""The scoring passes hold only what they need: a document pass the projection's matrices of its
layers, a query pass with a principal projection only the kept eigenvectors; projections in the
eigenbasis are built from stored factors a layer at a time. Each equals what the full factors give."""

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from pretrace.influence.document_gradients import compute_document_gradients
from pretrace.influence.projection import KroneckerProjection
from pretrace.influence.query_gradients import compute_query_gradients, layer_preconditioner
from pretrace.influence.scores import score_matrix
from pretrace.inputs.query_file import Query
from pretrace.project.computation import StoredFactors
from pretrace.testing.tiny import fitted_tiny_llama, random_sequences

QUERIES = [Query("capital", "The capital of France is", " Paris."), Query("arith", "(7 - 4) * 8 =", " 24")]
K_OUT, K_IN = 5, 7


@pytest.fixture(scope="module")
def fitted():
    docs = random_sequences(10, min_len=6, max_len=16, seed=5)
    lm, factors = fitted_tiny_llama(4, docs, double=True)
    return lm, factors, docs, [str(i) for i in range(len(docs))]


def test_a_principal_query_pass_holds_only_the_kept_eigenvectors(fitted):
    lm, factors, _, _ = fitted
    projection = KroneckerProjection.build(lm.layer_shapes(), K_OUT, K_IN, basis="principal", factors=factors)
    for name, (d_out, d_in) in lm.layer_shapes().items():
        held = layer_preconditioner(factors, name, projection)
        assert held.QS.shape == (d_out, K_OUT) and held.QA.shape == (d_in, K_IN)
        assert held.lambdas.shape == (K_OUT, K_IN) and held.back_left.shape == (K_OUT,)
        kept = projection.kept_out[name]
        torch.testing.assert_close(held.QS, factors.QS[name][:, kept].float())


@pytest.mark.parametrize("basis", ["whitened", "principal"])
def test_scores_from_what_the_passes_hold_equal_the_full_factors_projected(fitted, basis):
    """Reference: each query's gradient preconditioned with every eigenvector (no projection),
    then projected with the projection's dual, against the same projected document gradients."""
    lm, factors, docs, ids = fitted
    projection = KroneckerProjection.build(
        lm.layer_shapes(), K_OUT, K_IN, seed=2, basis=basis, factors=factors, dtype=torch.float64
    )
    documents = compute_document_gradients(lm, docs, ids, projection=projection)
    queries = compute_query_gradients(lm, factors, QUERIES, projection=projection)
    full, dual = compute_query_gradients(lm, factors, QUERIES), projection.dual()
    stored = expected = 0
    for name in lm.layer_shapes():
        d = documents.dense(name).flatten(1).T
        stored = stored + queries.dense(name).flatten(1) @ d
        expected = expected + dual.project_matrix(name, full.dense(name)).flatten(1) @ d
    # principal: the diagonal pair takes Q_S^T Q_S = I, true to the stored float32 eigenvectors' rounding
    tolerance = 1e-9 if basis == "whitened" else 1e-6
    torch.testing.assert_close(stored, expected, rtol=0, atol=tolerance * float(expected.abs().max()))


def test_a_document_pass_moves_only_its_layers_matrices(fitted):
    lm, factors, _, _ = fitted
    projection = KroneckerProjection.build(lm.layer_shapes(), K_OUT, K_IN, basis="whitened", factors=factors)
    first = lm.layers[0].name
    moved = projection.for_documents([first], torch.device("cpu"), torch.float64)
    assert list(moved.P_out) == list(moved.P_in) == [first] and moved.dual_out == moved.dual_in == {}
    assert moved.P_out[first].dtype == torch.float64 and moved.P_out[first].shape == (K_OUT, lm.layers[0].d_out)


class RecordingFile:
    """A safetensors file handle that records which tensors were read."""

    def __init__(self, file):
        self.file, self.read = file, []

    def metadata(self):
        return self.file.metadata()

    def keys(self):
        return self.file.keys()

    def get_tensor(self, key):
        self.read.append(key)
        return self.file.get_tensor(key)


@pytest.mark.parametrize("basis", ["whitened", "principal"])
def test_a_projection_built_from_stored_factors_a_layer_at_a_time_is_the_same(fitted, basis, tmp_path):
    lm, factors, _, _ = fitted
    tensors, metadata = factors.to_tensors()
    save_file(tensors, str(tmp_path / "factors.safetensors"), metadata)
    whole = KroneckerProjection.build(lm.layer_shapes(), K_OUT, K_IN, basis=basis, factors=factors)
    with safe_open(str(tmp_path / "factors.safetensors"), framework="pt") as file:
        recording = RecordingFile(file)
        layered = KroneckerProjection.build(
            lm.layer_shapes(), K_OUT, K_IN, basis=basis, factors=StoredFactors(recording)
        )
    assert sorted(recording.read) == sorted(tensors)  # each tensor read once
    for matrices in ("P_out", "P_in", "dual_out", "dual_in", "kept_out", "kept_in"):
        for name, value in getattr(whole, matrices).items():
            assert torch.equal(getattr(layered, matrices)[name], value), (matrices, name)


@pytest.mark.parametrize("basis", ["whitened", "principal"])
def test_float32_projection_matrices_change_scores_by_float_rounding(fitted, basis):
    """Everything else in float64: the projection's matrices rounded to float32 (as a pass holds
    them) move no score by more than 1e-5 of the largest (measured: 5e-8 whitened, 3e-8 principal)."""
    lm, factors, docs, ids = fitted
    scores = {}
    for dtype in (torch.float32, torch.float64):
        projection = KroneckerProjection.build(
            lm.layer_shapes(), K_OUT, K_IN, seed=2, basis=basis, factors=factors, dtype=dtype
        )
        scores[dtype] = score_matrix(
            compute_query_gradients(lm, factors, QUERIES, projection=projection),
            compute_document_gradients(lm, docs, ids, projection=projection),
        )
    difference = (scores[torch.float32] - scores[torch.float64]).abs().max() / scores[torch.float64].abs().max()
    assert 0 < difference < 1e-5, difference
