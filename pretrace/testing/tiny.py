"""Tiny randomly initialised causal LMs and an offline tokenizer, for tests and benchmarks."""

from __future__ import annotations

import random

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    CohereConfig,
    CohereForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    OlmoConfig,
    OlmoForCausalLM,
    PreTrainedTokenizerFast,
)

SENTENCES = [
    "The capital of France is Paris.",
    "To solve 3x + 4 = 10, subtract 4 from both sides, then divide by 3: x = 2.",
    "The slope between (1, 2) and (3, 8) is (8 - 2) / (3 - 1) = 3.",
    "def add(a, b):\n    return a + b\n",
    "(7 - 4) * 8 = 3 * 8 = 24",
    "Rivers flow into the sea and the sea is salty.",
]


def tiny_tokenizer(vocab_size: int = 300) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained in milliseconds; adds <bos> like most causal LM tokenizers."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<bos>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(SENTENCES * 4, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")


def tiny_model(
    arch: str = "llama",
    vocab_size: int = 300,
    hidden: int = 32,
    layers: int = 2,
    intermediate: int = 64,
    context: int = 64,
    seed: int = 0,
) -> torch.nn.Module:
    """A small random model of one of the architectures the paper's models belong to."""
    torch.manual_seed(seed)
    heads = 4
    if arch == "llama":
        config = LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=hidden,
            intermediate_size=intermediate,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=2,
            max_position_embeddings=context,
            tie_word_embeddings=False,
        )
        return LlamaForCausalLM(config).eval()
    if arch == "gpt2":
        config = GPT2Config(
            vocab_size=vocab_size,
            n_embd=hidden,
            n_layer=layers,
            n_head=heads,
            n_inner=intermediate,
            n_positions=context,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=1,
            eos_token_id=2,
        )
        return GPT2LMHeadModel(config).eval()
    if arch == "gpt_neox":
        config = GPTNeoXConfig(
            vocab_size=vocab_size,
            hidden_size=hidden,
            intermediate_size=intermediate,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            max_position_embeddings=context,
            bos_token_id=1,
            eos_token_id=2,
        )
        return GPTNeoXForCausalLM(config).eval()
    if arch == "olmo":
        config = OlmoConfig(
            vocab_size=vocab_size,
            hidden_size=hidden,
            intermediate_size=intermediate,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            max_position_embeddings=context,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        )
        return OlmoForCausalLM(config).eval()
    if arch == "cohere":
        config = CohereConfig(
            vocab_size=vocab_size,
            hidden_size=hidden,
            intermediate_size=intermediate,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=2,
            max_position_embeddings=context,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        )
        return CohereForCausalLM(config).eval()
    raise ValueError(f"unknown architecture {arch}")


ARCHITECTURES = ["llama", "gpt2", "gpt_neox", "olmo", "cohere"]


def random_sequences(
    n: int, vocab_size: int = 300, min_len: int = 5, max_len: int = 20, seed: int = 0
) -> list[list[int]]:
    """Token sequences of varied length (so batches are padded), starting with <bos>."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_len, max_len + 1, (n,), generator=g)
    return [[1] + torch.randint(3, vocab_size, (int(k) - 1,), generator=g).tolist() for k in lengths]


def sentence_documents(tokenizer, n: int = 60, seed: int = 0) -> list[list[int]]:
    """Documents made of pairs of SENTENCES, so gradients share real structure with queries."""
    rng = random.Random(seed)
    return [tokenizer(" ".join(rng.sample(SENTENCES, 2)))["input_ids"] for _ in range(n)]


def trained_tiny_llama(tokenizer, documents: list[list[int]], steps: int = 40, seed: int = 0) -> torch.nn.Module:
    """A tiny Llama fitted for a few seconds: random weights give scores with no structure,
    which makes projection-accuracy measurements meaningless."""
    from pretrace.influence.capture import sequence_losses
    from pretrace.inputs.batching import collate

    model = tiny_model("llama", vocab_size=len(tokenizer), seed=seed).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    rng = random.Random(seed)
    for _ in range(steps):
        batch = collate(rng.sample(documents, 16), pad_id=tokenizer.pad_token_id)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        loss = sequence_losses(logits, batch).sum() / batch.n_tokens
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def fitted_tiny_llama(model_seed: int, documents: list[list[int]], *, batch_size: int = 8, double: bool = False):
    """(wrapped tiny Llama on the CPU, EK-FAC factors fitted on ``documents``): what score tests start from."""
    from pretrace.influence.ekfac import fit_factors
    from pretrace.inputs.batching import batches
    from pretrace.model.adapter import wrap_model

    model = tiny_model("llama", seed=model_seed)
    lm = wrap_model(model.double() if double else model, tiny_tokenizer(), device="cpu")
    return lm, fit_factors(lm, lambda: (b for _, b in batches(documents, batch_size, 0)))
