"""Quantized document-gradient stores (`stored_gradient_dtype: int8 | int4`): each number within
half a level of its row's scale, codes that survive packing and a safetensors round trip, and
scores equal to those of the dequantized gradients."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from pretrace.documents import DocumentGradients, compute_document_gradients
from pretrace.errors import InputError
from pretrace.projection import KroneckerProjection
from pretrace.quantization import SCALE_BYTES, dequantize, pack, quantize, row_bytes, unpack
from pretrace.queries import Query, compute_query_gradients
from pretrace.scores import score_matrix
from tests.peer import pearson
from tests.tiny import fitted_tiny_llama, random_sequences

QUERIES = [Query("capital", "The capital of France is", " Paris."), Query("arith", "(7 - 4) * 8 =", " 24"),
           Query("code", "def add(a, b):", "\n    return a + b\n")]


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
    codes = torch.randint(-levels, levels + 1, (3, 4, columns), generator=torch.Generator().manual_seed(columns),
                          dtype=torch.int8)
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


@pytest.mark.parametrize("dtype", ["int8", "int4"])
def test_a_quantized_store_round_trips_and_scores_as_its_dequantized_gradients(setup, dtype, tmp_path):
    lm, docs, factors, projection = setup
    ids = list(map(str, range(len(docs))))
    full = compute_document_gradients(lm, docs, ids, projection=projection, batch_size=5)
    stored = compute_document_gradients(lm, docs, ids, projection=projection, batch_size=5, stored_dtype=dtype)
    assert stored.dtype == dtype
    for name in full.grads:  # each float32 gradient quantized once, batch by batch as a whole
        torch.testing.assert_close(stored.dense(name), dequantize(*quantize(full.grads[name], stored.bits)),
                                   rtol=0, atol=0)
    tensors, metadata = stored.to_tensors()
    save_file(tensors, tmp_path / "store.safetensors", metadata)
    again = DocumentGradients.from_tensors(load_file(tmp_path / "store.safetensors"), metadata)
    assert again.dtype == dtype and all(torch.equal(again.dense(n), stored.dense(n)) for n in full.grads)
    on_disk = (tmp_path / "store.safetensors").stat().st_size
    save_file(*full.to_tensors()[:1], tmp_path / "full.safetensors")
    assert on_disk < (tmp_path / "full.safetensors").stat().st_size * (0.5 if dtype == "int8" else 0.35)

    queries = compute_query_gradients(lm, factors, QUERIES, projection=projection)
    scores = score_matrix(queries, again)
    brute = sum(queries.dense(n).flatten(1).double() @ again.dense(n).flatten(1).double().T for n in full.grads)
    torch.testing.assert_close(scores.double(), brute, rtol=1e-5, atol=1e-6 * float(brute.abs().max()))
    reference = score_matrix(queries, full)
    assert min(pearson(a, b) for a, b in zip(scores, reference)) > (0.9999 if dtype == "int8" else 0.99)


def test_a_quantized_store_is_dense(setup):
    lm, docs, _, projection = setup
    with pytest.raises(InputError, match="int4 quantizes dense stores, and document_rank stores factors"):
        compute_document_gradients(lm, docs, list(map(str, range(len(docs)))), projection=projection, rank=2,
                                   stored_dtype="int4")
