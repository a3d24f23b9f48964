"""A byte-level BPE tokenizer trained on the demo corpus, so the tiny model needs no download."""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

BOS, EOS, PAD = "<bos>", "<eos>", "<pad>"


DEMO_VOCAB = 4096
"""The demo tokenizer's vocabulary (its model's embedding rows are at most this many)."""


def train_tokenizer(texts: Iterable[str], vocab_size: int = DEMO_VOCAB) -> PreTrainedTokenizerFast:
    """Byte-level BPE over texts; encoding with special tokens prepends <bos>, as Llama does.

    Byte level means any text encodes without unknown tokens, including the queries.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD)
