"""The configurations of published models the plan is checked on (their config.json values, no
weights): the paper's 7B and 35B and four 7B-class models of other families, and the paper's study as a workload."""

from __future__ import annotations

from transformers import Cohere2Config, CohereConfig, GPTNeoXConfig, LlamaConfig, Olmo2Config, PretrainedConfig

from pretrace.config import COMPACT_STORE
from pretrace.planning.memory_plan import Workload

PUBLISHED_SHAPES: dict[str, PretrainedConfig] = {
    "Llama-2-7B": LlamaConfig(
        vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32
    ),
    "Llama-3-8B": LlamaConfig(
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
    ),
    "OLMo-2-7B": Olmo2Config(
        vocab_size=100352, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32
    ),
    "Pythia-6.9B": GPTNeoXConfig(
        vocab_size=50432, hidden_size=4096, intermediate_size=16384, num_hidden_layers=32, num_attention_heads=32
    ),
    "Command-R7B": Cohere2Config(
        vocab_size=256000,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
    ),
    "Command-R-35B": CohereConfig(
        vocab_size=256000,
        hidden_size=8192,
        intermediate_size=22528,
        num_hidden_layers=40,
        num_attention_heads=64,
        num_key_value_heads=64,
    ),
}

WIDE_BLOCKS = {"Command-R-35B": 22528 // 4}
"""`factor_block_size` the plans give a model whose widest MLP side is decomposed in 4 diagonal blocks."""

PAPER_STUDY = Workload(
    batch_size=8,
    max_length=2048,
    dtype="bfloat16",
    documents=5_000_000,
    document_tokens=500,
    fit_documents=0.1,
    queries=80,
    query_length=256,
    query_rank=64,
    **COMPACT_STORE,
)
"""The paper's study: 5M documents of 2.5B tokens (2048 at most), fitted on a 10% sample, the compact store."""
