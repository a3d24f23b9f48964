"""Quantized document-gradient stores (`stored_gradient_dtype: int8 | int4`), dense or factored:
each number within half a level of its row's (rank's) scale, codes that survive packing and a
safetensors round trip, and scores equal to those of the dequantized gradients."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from pretrace.analyses.correlation import pearson
from pretrace.influence.document_gradients import DocumentGradients, compute_document_gradients
from pretrace.influence.projection import KroneckerProjection
from pretrace.influence.quantization import (
    SCALE_BYTES,
    dequantize,
    dequantize_factor,
    factor_bytes,
    pack,
    quantize,
    quantize_factors,
    row_bytes,
    unpack,
)
from pretrace.influence.query_gradients import compute_query_gradients
from pretrace.influence.scores import score_matrix
from pretrace.inputs.query_file import Query
from pretrace.testing.tiny import fitted_tiny_llama, random_sequences

QUERIES = [
    Query("capital", "The capital of France is", " Paris."),
    Query("arith", "(7 - 4) * 8 =", " 24"),
    Query("code", "def add(a, b):", "\n    return a + b\n"),
]


@pytest.mark.parametrize("bits", [8, 4])
def test_every_number_is_within_half_a_level_of_its_row_scale(bits):
    x = torch.randn(6, 5, 9, generator=torch.Generator().manual_seed(bits)) * torch.logspace(-8, 3, 5)[:, None]
    x[0, 2] = 0.0  # an all-zero row
    codes, scales = quantize(x, bits)
    levels = 2 ** (bits - 1) - 1
    assert codes.dtype == torch.int8 and scales.shape == (6, 5)
    assert int(codes.abs().max()) == levels and scales[0, 2] == 0 and not codes[0, 2].any()
    torch.testing.assert_close(scales, x.abs().amax(dim=-1) / levels)
    error = (dequantize(codes, scales) - x).abs()
    assert bool((error <= scales.unsqueeze(-1) / 2 * (1 + 1e-6)).all())  # brute force, number by number


@pytest.mark.parametrize("bits, columns", [(4, 7), (4, 8), (8, 7)])
def test_codes_survive_packing(bits, columns):
    levels = 2 ** (bits - 1) - 1
    codes = torch.randint(
        -levels, levels + 1, (3, 4, columns), generator=torch.Generator().manual_seed(columns), dtype=torch.int8
    )
    packed = pack(codes, bits)
    assert packed.shape[:-1] == (3, 4) and packed.element_size() == 1
    assert packed.shape[-1] == row_bytes(f"int{bits}", columns) - SCALE_BYTES == -(-columns * bits // 8)
    assert torch.equal(unpack(packed, bits, columns), codes)


@pytest.fixture(scope="module")
def setup():
    docs = random_sequences(24, min_len=8, max_len=30, seed=3)
    lm, factors = fitted_tiny_llama(4, docs)
    projection = KroneckerProjection.build(lm.layer_shapes(), 12, 9, basis="principal", factors=factors)
    return lm, docs, factors, projection


def round_tripped(stored: DocumentGradients, tmp_path) -> DocumentGradients:
    """``stored`` written to a safetensors file and read back: the same dtype and gradients."""
    tensors, metadata = stored.to_tensors()
    save_file(tensors, tmp_path / "store.safetensors", metadata)
    again = DocumentGradients.from_tensors(load_file(tmp_path / "store.safetensors"), metadata)
    assert again.dtype == stored.dtype and all(torch.equal(again.dense(n), stored.dense(n)) for n in stored.grads)
    return again


def assert_scores_as_dequantized(setup, stored: DocumentGradients, full: DocumentGradients) -> None:
    """Scores of the quantized ``stored`` equal brute-force products with its dequantized
    gradients, and correlate with those of the float32 ``full`` store."""
    lm, _, factors, projection = setup
    queries = compute_query_gradients(lm, factors, QUERIES, projection=projection)
    scores = score_matrix(queries, stored)
    brute = sum(queries.dense(n).flatten(1).double() @ stored.dense(n).flatten(1).double().T for n in full.grads)
    torch.testing.assert_close(scores.double(), brute, rtol=1e-5, atol=1e-6 * float(brute.abs().max()))
    reference = score_matrix(queries, full)
    assert min(pearson(a, b) for a, b in zip(scores, reference)) > (0.9999 if stored.dtype == "int8" else 0.99)


@pytest.mark.parametrize("dtype", ["int8", "int4"])
def test_a_quantized_store_round_trips_and_scores_as_its_dequantized_gradients(setup, dtype, tmp_path):
    lm, docs, factors, projection = setup
    ids = list(map(str, range(len(docs))))
    full = compute_document_gradients(lm, docs, ids, projection=projection, batch_size=5)
    stored = compute_document_gradients(lm, docs, ids, projection=projection, batch_size=5, stored_dtype=dtype)
    assert stored.dtype == dtype
    for name in full.grads:  # each float32 gradient quantized once, batch by batch as a whole
        torch.testing.assert_close(
            stored.dense(name), dequantize(*quantize(full.grads[name], stored.bits)), rtol=0, atol=0
        )
    again = round_tripped(stored, tmp_path)
    on_disk = (tmp_path / "store.safetensors").stat().st_size
    save_file(*full.to_tensors()[:1], tmp_path / "full.safetensors")
    assert on_disk < (tmp_path / "full.safetensors").stat().st_size * (0.5 if dtype == "int8" else 0.35)
    assert_scores_as_dequantized(setup, again, full)


@pytest.mark.parametrize("bits", [8, 4])
def test_factors_share_a_scale_per_rank_and_keep_their_product(bits):
    g = torch.Generator().manual_seed(bits)
    L = torch.randn(3, 7, 4, generator=g) * torch.logspace(-6, 2, 4)
    R = torch.randn(3, 5, 4, generator=g) * torch.logspace(3, -3, 4)
    L[1, :, 2] = 0.0  # a rank that is all zeros
    codes_l, codes_r, scales = quantize_factors(L, R, bits)
    levels = 2 ** (bits - 1) - 1
    assert codes_l.dtype == codes_r.dtype == torch.int8 and scales.shape == (3, 4)
    assert scales[1, 2] == 0 and not codes_l[1, :, 2].any() and not codes_r[1, :, 2].any()
    expected = (L.abs().amax(dim=1) * R.abs().amax(dim=1)).sqrt() / levels  # balanced: both columns reach it
    torch.testing.assert_close(scales, expected)
    assert bool((codes_l.abs().amax(dim=1) == levels)[scales > 0].all())
    assert bool((codes_r.abs().amax(dim=1) == levels)[scales > 0].all())
    product = dequantize_factor(codes_l, scales) @ dequantize_factor(codes_r, scales).transpose(1, 2)
    # brute force: each rank's column pair is off by at most half a level each, around its balanced values
    balance = (R.abs().amax(dim=1) / L.abs().amax(dim=1)).sqrt().nan_to_num(1.0, posinf=1.0)
    Lb, Rb = L * balance.unsqueeze(1), R / balance.unsqueeze(1)
    step = scales[:, None, None, :]  # (document, k_out, k_in, rank)
    bound = (step / 2 * (Lb.abs().unsqueeze(2) + Rb.abs().unsqueeze(1) + step / 2)).sum(-1)
    assert bool(((product - L @ R.transpose(1, 2)).abs() <= bound * (1 + 1e-5) + 1e-30).all())


@pytest.mark.parametrize("dtype", ["int8", "int4"])
def test_a_quantized_factored_store_round_trips_and_scores_as_its_dequantized_factors(setup, dtype, tmp_path):
    lm, docs, factors, projection = setup
    ids = list(map(str, range(len(docs))))
    rank = 3
    full = compute_document_gradients(lm, docs, ids, projection=projection, batch_size=5, rank=rank)
    stored = compute_document_gradients(
        lm, docs, ids, projection=projection, batch_size=5, rank=rank, stored_dtype=dtype
    )
    assert stored.dtype == dtype and stored.rank == rank
    for name in full.grads:  # the float32 factors, quantized once
        L, R = stored.factors(name)
        codes_l, codes_r, scales = quantize_factors(full.grads[name], full.right[name], stored.bits)
        assert torch.equal(L, dequantize_factor(codes_l, scales)) and torch.equal(R, dequantize_factor(codes_r, scales))
    again = round_tripped(stored, tmp_path)
    shapes = lm.layer_shapes()
    written = sum(t.nbytes for k, t in stored.to_tensors()[0].items() if k != "losses")
    assert written == len(docs) * sum(factor_bytes(dtype, rank, min(12, o), min(9, i)) for o, i in shapes.values())
    assert_scores_as_dequantized(setup, again, full)
