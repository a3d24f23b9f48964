"""Checkpoints pretrace must refuse, each with the reason and the fix, and the private,
verified cache of remote checkpoints."""

import json
import os
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import BertConfig, BertForMaskedLM, BertLMHeadModel

from pretrace.errors import InputError
from pretrace.model.adapter import load_model
from pretrace.model.checkpoint_cache import FILES_RECORD, local_checkpoint
from pretrace.store.fingerprint import cache_folder
from pretrace.testing.tiny import tiny_model, tiny_tokenizer

BERT = dict(vocab_size=300, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)


def _checkpoint(path: Path, model: torch.nn.Module) -> Path:
    model.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def test_an_encoder_saved_as_a_masked_lm_is_refused(tmp_path):
    _checkpoint(tmp_path, BertForMaskedLM(BertConfig(**BERT)))
    with pytest.raises(InputError, match=r"is a BertForMaskedLM, not a causal language model.*ForCausalLM"):
        load_model(str(tmp_path), device="cpu")


def test_a_decoder_class_with_bidirectional_attention_is_refused(tmp_path):
    # BertLMHeadModel is what AutoModelForCausalLM makes of BERT; without is_decoder it sees
    # every token, later ones included.
    _checkpoint(tmp_path, BertLMHeadModel(BertConfig(**BERT, is_decoder=False)))
    with pytest.raises(InputError, match="lets each token see the tokens after it"):
        load_model(str(tmp_path), device="cpu")
    _checkpoint(tmp_path, BertLMHeadModel(BertConfig(**BERT, is_decoder=True)))
    assert load_model(str(tmp_path), device="cpu", layers=["intermediate"]).model.config.is_decoder


def test_a_checkpoint_without_its_lm_head_is_refused(tmp_path):
    _checkpoint(tmp_path, tiny_model("llama"))
    weights = load_file(tmp_path / "model.safetensors")
    save_file(
        {k: v for k, v in weights.items() if not k.startswith("lm_head")},
        tmp_path / "model.safetensors",
        metadata={"format": "pt"},
    )
    with pytest.raises(InputError, match=r"lacks weights a LlamaForCausalLM needs \(lm_head.weight\).*at random"):
        load_model(str(tmp_path), device="cpu")


def test_pickled_weights_need_the_users_consent(tmp_path):
    model = tiny_model("llama")
    _checkpoint(tmp_path, model)
    (tmp_path / "model.safetensors").unlink()
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(InputError, match=r"only pickled weights \(pytorch_model.bin\).*`allow_pickle: true`"):
        load_model(str(tmp_path), device="cpu")
    loaded = load_model(str(tmp_path), device="cpu", allow_pickle=True).model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())


def test_custom_code_names_the_yaml_key(tmp_path):
    _checkpoint(tmp_path, tiny_model("llama"))
    config = json.loads((tmp_path / "config.json").read_text())
    config |= {
        "model_type": "my-own-llama",
        "auto_map": {"AutoConfig": "modeling_mine.MyConfig", "AutoModelForCausalLM": "modeling_mine.MyModel"},
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "modeling_mine.py").write_text("raise SystemExit('this code must not run')\n")
    with pytest.raises(InputError, match=r"set `trust_remote_code: true` in pretrace.yaml only if you trust"):
        load_model(str(tmp_path), device="cpu")


def test_a_tokenizer_with_more_ids_than_the_embedding_is_refused(tmp_path):
    tiny_model("llama", vocab_size=200).save_pretrained(tmp_path)
    tiny_tokenizer(vocab_size=300).save_pretrained(tmp_path)
    with pytest.raises(InputError, match=r"tokenizer .* has 300 tokens but the model's embedding has 200 rows"):
        load_model(str(tmp_path), device="cpu")


def test_the_cache_of_remote_checkpoints_is_private_and_verified(tmp_path, s3_root, monkeypatch):
    from tests.s3server import upload

    # A checkpoint planted where older versions cached S3 models is never read.
    planted = Path(tempfile.gettempdir()) / "pretrace-models"
    _checkpoint(tmp_path / "planted", tiny_model("llama", seed=9))
    planted.mkdir(exist_ok=True)
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o777)
    os.chmod(cache, 0o777)
    monkeypatch.setenv("PRETRACE_CACHE_DIR", str(cache))
    url = f"{s3_root}/model"
    upload(_checkpoint(tmp_path / "real", tiny_model("llama", seed=1)), url)
    expected = tiny_model("llama", seed=1).state_dict()

    def loads_the_real_weights() -> bool:
        loaded = load_model(url, device="cpu").model.state_dict()
        return all(torch.equal(loaded[k], v) for k, v in expected.items())

    for name in os.listdir(tmp_path / "planted"):
        for folder in [planted / "x", *planted.glob("*")]:
            folder.mkdir(exist_ok=True)
            (folder / name).write_bytes((tmp_path / "planted" / name).read_bytes())
    assert loads_the_real_weights()
    assert cache_folder().stat().st_mode & 0o777 == 0o700, "the cache folder was left writable by others"
    copy = local_checkpoint(url)
    assert copy.is_relative_to(cache) and (copy / FILES_RECORD).exists()

    # A cached copy whose bytes changed (here: another model's weights) is fetched again.
    (copy / "model.safetensors").write_bytes((tmp_path / "planted" / "model.safetensors").read_bytes())
    assert loads_the_real_weights()
    # So is one with a file added.
    (copy / "extra.py").write_text("print('planted')\n")
    assert loads_the_real_weights() and not (local_checkpoint(url) / "extra.py").exists()
