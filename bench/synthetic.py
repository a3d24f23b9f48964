"""The benchmarks' random Llama models and Zipf-distributed token data, built from their arguments
(hidden, intermediate, layers, heads, vocab, docs, doc_len, queries, prompt_len, completion_len, seed)."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def config_of(args) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        max_position_embeddings=max(args.doc_len, args.prompt_len + args.completion_len),
        tie_word_embeddings=False,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )


def build_model(args) -> LlamaForCausalLM:
    torch.manual_seed(args.seed)
    return LlamaForCausalLM(config_of(args)).eval()


def zipf_tokens(n: int, length: int, vocab: int, generator: torch.Generator) -> list[list[int]]:
    """Sequences starting with <bos>=1, other ids Zipf(1)-distributed over 3..vocab-1."""
    ranks = torch.arange(1, vocab - 2, dtype=torch.float64)
    weights = 1.0 / ranks
    ids = torch.multinomial(weights, n * (length - 1), replacement=True, generator=generator) + 3
    ids = ids.view(n, length - 1)
    return [[1] + row.tolist() for row in ids]


def make_data(args, n_docs: int | None = None):
    n_docs = args.docs if n_docs is None else n_docs
    g = torch.Generator().manual_seed(args.seed + 1)
    docs = zipf_tokens(n_docs, args.doc_len, args.vocab, g)
    qg = torch.Generator().manual_seed(args.seed + 2)
    queries = zipf_tokens(args.queries, args.prompt_len + args.completion_len, args.vocab, qg)
    starts = [args.prompt_len] * len(queries)
    return docs, queries, starts
