"""EK-FAC against dense linear algebra, and the additivity the pipeline's fan-out relies on."""

from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from pretrace.config import Damping
from pretrace.errors import InputError, NumericalError
from pretrace.influence.capture import capture
from pretrace.influence.document_gradients import compute_document_gradients
from pretrace.influence.ekfac import (
    BlockDiagonal,
    CovarianceState,
    Eigenbasis,
    Factors,
    LambdaState,
    diagonal_blocks,
    eigenbasis,
    fit_covariances,
    fit_factors,
    fit_lambdas,
    make_factors,
    rotated_gradients,
)
from pretrace.influence.query_gradients import query_gradients_from_tokens
from pretrace.influence.scores import score_matrix
from pretrace.inputs.batching import batches, collate
from pretrace.model.adapter import wrap_model
from pretrace.testing.tiny import random_sequences, tiny_model


def random_orthogonal(d, seed):
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


@pytest.mark.parametrize("tokens", [2, 400])  # rotates the tokens (few) or the summed gradient (many)
def test_rotating_onto_some_eigenvectors_gives_that_block_of_the_rotation(tokens):
    """Q_S and Q_A restricted to some columns (what a principal projection's queries use) give
    exactly that block of the full rotation Q_S^T (sum_t g_t a_t^T) Q_A, whichever way it is computed."""
    g = torch.Generator().manual_seed(0)
    a, grads = (
        torch.randn(3, tokens, 9, generator=g, dtype=torch.float64),
        torch.randn(3, tokens, 7, generator=g, dtype=torch.float64),
    )
    QA, _ = torch.linalg.qr(torch.randn(9, 9, generator=g, dtype=torch.float64))
    QS, _ = torch.linalg.qr(torch.randn(7, 7, generator=g, dtype=torch.float64))
    full = QS.T @ torch.einsum("bto,bti->boi", grads, a) @ QA
    rows, columns = torch.tensor([1, 4, 6]), torch.tensor([0, 2, 3, 8])
    block = rotated_gradients(a, grads, QA[:, columns], QS[:, rows])
    torch.testing.assert_close(block, full[:, rows][:, :, columns], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rotated_gradients(a, grads, QA, QS), full, rtol=1e-12, atol=1e-12)


def test_inverse_hvp_equals_dense_solve():
    d_out, d_in = 5, 4
    QA, QS = random_orthogonal(d_in, 1), random_orthogonal(d_out, 2)
    lambdas = torch.rand(d_out, d_in, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) + 0.01
    factors = Factors({"w": QA}, {"w": QS}, {"w": lambdas}, {"w": 0.05})
    V = torch.randn(d_out, d_in, dtype=torch.float64)

    # vec() stacks columns, so vec(Q_S X Q_A^T) = (Q_A kron Q_S) vec(X).
    def vec(X):
        return X.T.reshape(-1)

    basis = torch.kron(QA, QS)
    dense = basis @ torch.diag(vec(lambdas) + 0.05) @ basis.T
    expected = torch.linalg.solve(dense, vec(V)).reshape(d_in, d_out).T
    torch.testing.assert_close(factors.inverse_hvp("w", V), expected, rtol=1e-10, atol=1e-12)


class BigramModel(torch.nn.Module):
    """Logits at position 0 are W emb(x); later positions see a zero input.

    With W = 0 every prediction is uniform, so a token's output gradient softmax - onehot(y)
    depends on its label alone. Over all (x, y) pairs the per-example gradients g a^T form a
    product set, and the empirical Fisher is exactly A kron S: the case where EK-FAC is exact.
    """

    def __init__(self, vocab, width):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, width)
        self.head = torch.nn.Linear(width, vocab, bias=False)
        torch.nn.init.zeros_(self.head.weight)

    def get_input_embeddings(self):
        return self.embed

    def forward(self, input_ids, attention_mask):
        hidden = self.embed(input_ids)
        first_only = torch.zeros(input_ids.shape[1], 1, dtype=hidden.dtype)
        first_only[0] = 1
        return SimpleNamespace(logits=self.head(hidden * first_only))


def test_ekfac_equals_exact_damped_fisher_when_kronecker_is_exact():
    torch.manual_seed(0)
    vocab, width = 6, 4
    lm = wrap_model(BigramModel(vocab, width).double(), layers=["head"], device="cpu")
    pairs = [[x, y] for x in range(vocab) for y in range(vocab)]
    factors = fit_factors(lm, lambda: (b for _, b in batches(pairs, 7, 0)), fisher="empirical")

    # The brute force: per-example gradients by autograd, dense Fisher, dense solve.
    def grad(pair):
        lm.model.zero_grad()
        logits = lm.model(torch.tensor([pair]), None).logits[0, 0]
        torch.nn.functional.cross_entropy(logits[None], torch.tensor([pair[1]])).backward()
        return lm.model.head.weight.grad.clone()

    G = torch.stack([grad(p).reshape(-1) for p in pairs])
    fisher = G.T @ G / len(pairs)
    damping = 0.1 * fisher.diagonal().mean()  # 0.1 x mean eigenvalue = 0.1 x trace / D
    assert factors.damping["head"] == pytest.approx(float(damping), rel=1e-5)
    queries = [[1, 4], [3, 0], [5, 5]]
    Gq = torch.stack([grad(q).reshape(-1) for q in queries])
    expected = Gq @ torch.linalg.solve(fisher + damping * torch.eye(len(fisher), dtype=fisher.dtype), G.T)

    qg = query_gradients_from_tokens(lm, factors, queries, [1] * len(queries), ["a", "b", "c"])
    dg = compute_document_gradients(lm, pairs, [str(p) for p in pairs], batch_size=7)
    got = score_matrix(qg, dg)
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-6 * float(expected.abs().max()))


def assert_same_sum(got: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal to float32 rounding: a fit's terms add in float32 on the device before its float64
    total (`DeviceSum`), so sums split otherwise differ by a few float32 ulps of their largest entry."""
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6 * float(expected.abs().max()))


@pytest.mark.parametrize("fisher", ["empirical", "sampled"])
def test_merged_partial_fits_equal_one_fit(fisher):
    lm = wrap_model(tiny_model("llama"), device="cpu")
    seqs = random_sequences(24, seed=7)

    def all_batches(s):
        return [b for _, b in batches(s, 4, 0)]

    whole = fit_covariances(lm, all_batches(seqs), fisher, seed=3)
    merged = fit_covariances(lm, all_batches(seqs[:8]), fisher, seed=3).merge(
        fit_covariances(lm, all_batches(seqs[8:]), fisher, seed=3)
    )
    assert (merged.n_tokens, merged.n_examples) == (whole.n_tokens, whole.n_examples)
    for name in whole.A:
        assert_same_sum(merged.A[name], whole.A[name])
        assert_same_sum(merged.S[name], whole.S[name])
    basis = eigenbasis(whole)
    lam_whole = fit_lambdas(lm, basis, all_batches(seqs), fisher, seed=3)
    lam_merged = fit_lambdas(lm, basis, all_batches(seqs[:12]), fisher, seed=3).merge(
        fit_lambdas(lm, basis, all_batches(seqs[12:]), fisher, seed=3)
    )
    assert lam_merged.n_examples == 24
    for name in lam_whole.sums:
        assert_same_sum(lam_merged.sums[name], lam_whole.sums[name])


def test_sampled_and_empirical_fisher_differ():
    lm = wrap_model(tiny_model("llama"), device="cpu")
    data = [b for _, b in batches(random_sequences(8), 4, 0)]
    sampled, empirical = fit_covariances(lm, data, "sampled"), fit_covariances(lm, data, "empirical")
    name = lm.layers[0].name
    torch.testing.assert_close(sampled.A[name], empirical.A[name])  # activations do not depend on labels
    assert not torch.allclose(sampled.S[name], empirical.S[name])


def test_states_round_trip_through_safetensors(tmp_path):
    lm = wrap_model(tiny_model("gpt2"), device="cpu")
    data = [b for _, b in batches(random_sequences(8), 4, 0)]
    cov = fit_covariances(lm, data)
    basis = eigenbasis(cov)
    lam = fit_lambdas(lm, basis, data)
    factors = make_factors(basis, lam, Damping(absolute=1e-3))
    for state, cls in ((cov, CovarianceState), (basis, Eigenbasis), (lam, LambdaState), (factors, Factors)):
        tensors, meta = state.to_tensors()
        path = tmp_path / f"{cls.__name__}.safetensors"
        save_file(tensors, path, metadata=meta)
        with safe_open(path, "pt") as f:
            loaded = cls.from_tensors(load_file(path), f.metadata())
        assert loaded.to_tensors()[1] == meta
        for key, value in loaded.to_tensors()[0].items():
            torch.testing.assert_close(value, tensors[key], rtol=0, atol=0)
    with pytest.raises(InputError, match="expected a stored factors, found 'lambdas'"):
        Factors.from_tensors(*lam.to_tensors())
    assert set(factors.damping.values()) == {1e-3}


def test_eigenbasis_diagonalises_covariances_and_lambdas_are_mean_squares():
    lm = wrap_model(tiny_model("llama"), device="cpu")
    seqs = random_sequences(6, seed=2)
    data = [b for _, b in batches(seqs, 3, 0)]
    cov = fit_covariances(lm, data, "empirical")
    basis = eigenbasis(cov)
    factors = make_factors(basis, fit_lambdas(lm, basis, data, "empirical"))
    name = lm.layers[1].name
    A = (cov.A[name] / cov.n_tokens).float()
    rotated = basis.QA[name].T @ A @ basis.QA[name]
    torch.testing.assert_close(rotated, torch.diag(basis.eigvals_A[name]), atol=1e-5, rtol=1e-4)
    per_example = capture(lm, collate(seqs, 0)).per_example_gradients(name)
    brute = (basis.QS[name].T @ per_example @ basis.QA[name]).square().mean(0)
    torch.testing.assert_close(factors.lambdas[name], brute, rtol=1e-4, atol=1e-10)
    assert factors.damping[name] == pytest.approx(0.1 * float(brute.mean()), rel=1e-5)


@pytest.mark.parametrize(
    "size, block_size, expected",
    [
        (64, None, [64]),
        (64, 64, [64]),
        (64, 100, [64]),
        (64, 16, [16] * 4),
        (65, 16, [13] * 5),
        (11008, 4096, [3669, 3669, 3670]),
    ],
)
def test_diagonal_blocks_are_the_fewest_about_equal_blocks_at_most_block_size(size, block_size, expected):
    blocks = diagonal_blocks(size, block_size)
    assert [b.stop - b.start for b in blocks] == expected
    assert (
        blocks[0].start == 0 and blocks[-1].stop == size and all(a.stop == b.start for a, b in zip(blocks, blocks[1:]))
    )


def test_block_diagonal_factors_equal_ekfac_of_the_covariances_masked_to_their_diagonal_blocks():
    """Grosse et al.'s within-layer block-diagonal approximation, against brute force: the
    eigenbasis reconstructs exactly the block-diagonal part of each covariance, and the factors'
    inverse-HVP equals EK-FAC built by dense eigendecomposition of the masked covariances."""
    lm = wrap_model(tiny_model("llama"), device="cpu")  # MLP sides 32 and 64: blocks of 16
    data = [b for _, b in batches(random_sequences(12, seed=4), 4, 0)]
    whole = fit_covariances(lm, data, "empirical")
    blocked = fit_covariances(lm, data, "empirical", block_size=16)

    def masked(matrix):
        mask = torch.zeros_like(matrix, dtype=torch.bool)
        for block in diagonal_blocks(len(matrix), 16):
            mask[block, block] = True
        return torch.where(mask, matrix, torch.zeros_like(matrix))

    reference = CovarianceState(
        {k: masked(v) for k, v in whole.A.items()},
        {k: masked(v) for k, v in whole.S.items()},
        whole.n_tokens,
        whole.n_examples,
    )
    basis = eigenbasis(blocked, block_size=16)
    for name in whole.A:
        torch.testing.assert_close(blocked.A[name], reference.A[name], rtol=1e-6, atol=1e-6)
        A = reference.A[name] / whole.n_tokens
        rebuilt = basis.QA[name].double() @ torch.diag(basis.eigvals_A[name].double()) @ basis.QA[name].double().T
        torch.testing.assert_close(rebuilt, A, rtol=1e-4, atol=1e-5 * float(A.abs().max()))
    dense_basis = eigenbasis(reference)  # dense eigh of the masked matrices: the same subspaces, other order
    factors = {
        kind: make_factors(b, fit_lambdas(lm, b, data, "empirical"))
        for kind, b in (("blocked", basis), ("dense", dense_basis))
    }
    plain = make_factors(eigenbasis(whole), fit_lambdas(lm, eigenbasis(whole), data, "empirical"))
    V = torch.randn(lm.layers[0].d_out, lm.layers[0].d_in, generator=torch.Generator().manual_seed(5))
    name = lm.layers[0].name
    got, expected = factors["blocked"].inverse_hvp(name, V), factors["dense"].inverse_hvp(name, V)
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-4 * float(expected.abs().max()))
    assert (plain.inverse_hvp(name, V) - got).norm() > 0.05 * got.norm()  # an approximation, not the whole layer


@pytest.mark.parametrize("tokens", [1, 50])  # the two ways round of `rotated_gradients`
def test_a_block_diagonal_eigenbasis_held_as_its_blocks_rotates_as_the_square(tokens):
    g = torch.Generator().manual_seed(6)

    def square(size, block_size):
        Q = torch.zeros(size, size, dtype=torch.float64)
        for block in diagonal_blocks(size, block_size):
            Q[block, block] = torch.randn(
                block.stop - block.start, block.stop - block.start, generator=g, dtype=Q.dtype
            )
        return Q

    QA, QS = square(10, 4), square(7, 3)
    held = [BlockDiagonal.of(Q, size, torch.device("cpu"), torch.float64) for Q, size in ((QA, 4), (QS, 3))]
    assert [len(h.parts) for h in held] == [3, 3] and held[0].shape == (10, 10)
    a = torch.randn(2, tokens, 10, generator=g, dtype=torch.float64)
    grads = torch.randn(2, tokens, 7, generator=g, dtype=torch.float64)
    expected = rotated_gradients(a, grads, QA, QS)
    torch.testing.assert_close(rotated_gradients(a, grads, *held), expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(InputError, match="factor_block_size: 5 does not split the eigenbasis"):
        BlockDiagonal.of(QA, 5, torch.device("cpu"), torch.float64)


def test_fitting_with_a_block_size_gives_the_factors_of_the_blocked_covariances_with_whole_eigenbases():
    """`fit_factors` with ``block_size`` holds the sums and eigenbases as blocks on the device: the
    same factors as the blocked covariances' eigenbasis used as full (zero-padded) squares."""
    lm = wrap_model(tiny_model("llama"), device="cpu")  # MLP sides 32 and 64: blocks of 16
    data = [b for _, b in batches(random_sequences(12, seed=4), 4, 0)]
    basis = eigenbasis(fit_covariances(lm, data, "empirical", block_size=16), block_size=16)
    expected = make_factors(basis, fit_lambdas(lm, basis, data, "empirical"))
    got = fit_factors(lm, lambda: data, "empirical", block_size=16)
    for name in expected.layers:
        torch.testing.assert_close(got.QA[name], expected.QA[name], rtol=0, atol=0)
        torch.testing.assert_close(got.QS[name], expected.QS[name], rtol=0, atol=0)
        torch.testing.assert_close(got.lambdas[name], expected.lambdas[name], rtol=1e-5, atol=1e-7)


def test_a_block_size_wider_than_every_layer_changes_nothing():
    lm = wrap_model(tiny_model("llama"), device="cpu")
    data = [b for _, b in batches(random_sequences(8, seed=1), 4, 0)]
    whole, wide = fit_covariances(lm, data), fit_covariances(lm, data, block_size=64)
    for name in whole.A:
        assert torch.equal(whole.A[name], wide.A[name]) and torch.equal(whole.S[name], wide.S[name])
        assert torch.equal(eigenbasis(whole).QS[name], eigenbasis(wide, block_size=64).QS[name])


def test_non_finite_weights_name_the_layer():
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[0, 0] = float("inf")
    lm = wrap_model(model, device="cpu")
    with pytest.raises(NumericalError, match=r"layer model\.layers\.0\.mlp\.\w+ is not finite.*float32 or bfloat16"):
        fit_covariances(lm, [collate(random_sequences(2), 0)])


def test_damping_forms():
    assert Damping.model_validate(0.1).resolve(2.0) == pytest.approx(0.2)
    assert Damping.model_validate({"absolute": 2.0}).resolve(5.0) == 2.0
    with pytest.raises(ValueError, match="must be a number > 0"):
        Damping.model_validate(-0.1)
