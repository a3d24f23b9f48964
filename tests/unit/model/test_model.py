"""The model adapter, and the whole core on each architecture family of the paper's models."""

import pytest
import torch
from transformers import DistilBertConfig, DistilBertModel

from pretrace.errors import InputError
from pretrace.influence.document_gradients import compute_document_gradients
from pretrace.influence.ekfac import fit_factors
from pretrace.influence.projection import KroneckerProjection
from pretrace.influence.query_gradients import compute_query_gradients
from pretrace.influence.scores import score_matrix, stream_scores
from pretrace.inputs.batching import batches
from pretrace.inputs.query_file import Query
from pretrace.model.adapter import load_model, select_layers, wrap_model
from pretrace.testing.tiny import ARCHITECTURES, random_sequences, tiny_model, tiny_tokenizer

DEFAULT_MLP_LAYERS = {
    "llama": {"model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj", "model.layers.0.mlp.down_proj"},
    "gpt2": {"transformer.h.0.mlp.c_fc", "transformer.h.0.mlp.c_proj"},
    "gpt_neox": {"gpt_neox.layers.0.mlp.dense_h_to_4h", "gpt_neox.layers.0.mlp.dense_4h_to_h"},
    "olmo": {"model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj", "model.layers.0.mlp.down_proj"},
    "cohere": {"model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj", "model.layers.0.mlp.down_proj"},
}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_default_layers_are_every_blocks_mlp(arch):
    layers = select_layers(tiny_model(arch, layers=1))
    assert {layer.name for layer in layers} == DEFAULT_MLP_LAYERS[arch]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_whole_core_runs_on_each_architecture(arch, tmp_path):
    tok = tiny_tokenizer()
    tiny_model(arch).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    lm = load_model(str(tmp_path), device="cpu")
    docs = random_sequences(10, seed=4)
    factors = fit_factors(lm, lambda: (b for _, b in batches(docs, 4, lm.pad_token_id)))
    queries = [Query("q1", "The capital of France is", " Paris."), Query("q2", "(7 - 4) * 8 =", " 24")]
    for proj in (None, KroneckerProjection.build(lm.layer_shapes(), 6, 6)):
        qg = compute_query_gradients(lm, factors, queries, projection=proj, rank=2)
        stored = score_matrix(qg, compute_document_gradients(lm, docs, list(map(str, range(10))), projection=proj))
        streamed = stream_scores(lm, qg, docs, projection=proj, batch_size=3)
        assert torch.isfinite(stored).all() and stored.abs().max() > 0
        torch.testing.assert_close(streamed, stored, rtol=1e-4, atol=1e-5 * float(stored.abs().max()))


def test_pattern_matching_nothing_lists_the_linear_layers():
    with pytest.raises(
        InputError, match=r"no linear layer matches \['ffn'\].*model\.layers\.0\.self_attn\.q_proj.*lm_head"
    ):
        select_layers(tiny_model("llama"), ["ffn"])


def test_bad_regex_is_named():
    with pytest.raises(InputError, match=r"'mlp\(' is not a valid regular expression"):
        select_layers(tiny_model("llama"), ["mlp("])


def test_checkpoint_that_is_not_a_causal_lm(tmp_path):
    DistilBertModel(DistilBertConfig(vocab_size=50, dim=16, n_layers=1, n_heads=2, hidden_dim=32)).save_pretrained(
        tmp_path
    )
    with pytest.raises(InputError, match=r"is a DistilBertModel, not a causal language model"):
        load_model(str(tmp_path), device="cpu")


def test_missing_checkpoint(tmp_path):
    with pytest.raises(InputError, match="is not a directory"):
        load_model(str(tmp_path / "nowhere"))
    with pytest.raises(InputError, match="has no config.json"):
        load_model(str(tmp_path))


def test_device_and_dtype_validation():
    with pytest.raises(InputError, match="dtype: 'float8' is not one of"):
        wrap_model(tiny_model("llama"), dtype="float8")
    with pytest.raises(InputError, match="device: 'tpu' is not one of"):
        wrap_model(tiny_model("llama"), device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no GPU"):
            wrap_model(tiny_model("llama"), device="cuda")


def test_bfloat16_autocast_accumulates_in_float32():
    lm32 = wrap_model(tiny_model("llama"), device="cpu")
    lm16 = wrap_model(tiny_model("llama"), device="cpu", dtype="bfloat16")
    docs = random_sequences(6)
    g32 = compute_document_gradients(lm32, docs, list("abcdef"))
    g16 = compute_document_gradients(lm16, docs, list("abcdef"))
    for name, grad in g16.grads.items():
        assert grad.dtype == torch.float32
        cosine = torch.nn.functional.cosine_similarity(grad.flatten(1), g32.grads[name].flatten(1)).min()
        assert cosine > 0.95, name


def test_a_checkpoint_replaced_on_s3_is_downloaded_again(tmp_path, s3_root):
    from tests.s3server import upload

    url = f"{s3_root}/model"
    for seed in (1, 2):
        local = tmp_path / f"seed{seed}"
        tiny_model("llama", seed=seed).save_pretrained(local)
        tiny_tokenizer().save_pretrained(local)
        upload(local, url)  # the second upload replaces the first under the same URL
        loaded = load_model(url, device="cpu").model.state_dict()
        expected = tiny_model("llama", seed=seed).state_dict()
        assert all(torch.equal(loaded[k], expected[k]) for k in expected), f"stale weights after upload {seed}"
