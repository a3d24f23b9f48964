"""Train the demo's tiny Llama on the demo corpus, so the whole pipeline runs without a download.

The model (about 2M parameters) learns the corpus's facts and the layout and arithmetic of its
worked solutions, enough to answer most of the demo's own queries, which is what the influence
analysis then traces. The demo's facts, worked solutions and arithmetic tables are seen
EPOCH_COPIES times per pass over the corpus, the code and prose once: a pretraining mixture
weighted towards what the queries ask. Training takes `demo_steps` steps of 8 x 256 tokens, on
one thread, and is a function of the corpus, the seed, the step count and `training_recipe` alone
(no wall-clock budget), so the same inputs give the same weights on a busy or an idle machine,
on two cores or many. The demo ships the model its defaults train (`pretrace.demo.shipped_model`).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from pretrace.demo.tokenizer import train_tokenizer
from pretrace.errors import InputError
from pretrace.inputs.corpus import read_records
from pretrace.model.threads import torch_threads

MODEL_SHAPE = {
    "hidden_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "intermediate_size": 512,
}
LEARNING_RATE = 3e-3
WARMUP_STEPS = 10
_FINAL_LOSS_WINDOW = 10
EPOCH_COPIES = {k: 4 for k in ("facts", "math_procedure", "math_result", "math_table", "planted", "planted_reasoning")}
"""Copies of a document per pass over the corpus, by source (1 for any other)."""


def training_recipe(batch_size: int = 8) -> dict[str, object]:
    """Everything besides the corpus, steps, seed and context that the weights depend on: what a
    shipped checkpoint records, so that a change here is never served a model trained without it."""
    return {
        "model_shape": MODEL_SHAPE,
        "learning_rate": LEARNING_RATE,
        "warmup_steps": WARMUP_STEPS,
        "batch_size": batch_size,
        "epoch_copies": dict(sorted(EPOCH_COPIES.items())),
    }


def _documents(texts: list[str], tokenizer: PreTrainedTokenizerFast) -> list[torch.Tensor]:
    """Each text as <bos> ids <eos>, the unit that packing keeps whole and shuffles."""
    encoded = tokenizer(texts, add_special_tokens=True)["input_ids"]
    return [torch.tensor([*ids, tokenizer.eos_token_id]) for ids in encoded]


def _batches(
    docs: list[torch.Tensor], max_length: int, batch_size: int, generator: torch.Generator
) -> Iterator[torch.Tensor]:
    """Endless batches of max_length blocks; each epoch packs the documents in a new order."""
    while True:
        order = torch.randperm(len(docs), generator=generator).tolist()
        stream = torch.cat([docs[i] for i in order])
        blocks = stream[: len(stream) // max_length * max_length].view(-1, max_length)
        for start in range(0, len(blocks) - batch_size + 1, batch_size):
            yield blocks[start : start + batch_size]


def _lr_factor(step: int, done: float) -> float:
    """Linear warm-up over WARMUP_STEPS, then cosine decay to a tenth as `done` goes 0 -> 1."""
    if step < WARMUP_STEPS:
        return (step + 1) / WARMUP_STEPS
    return 0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, done)))


def _replace_dir(tmp: Path, out_dir: Path) -> None:
    """Move a finished checkpoint into place, replacing any previous one."""
    old = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.old")
    if out_dir.exists():
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def demo_model_config(
    vocab_size: int, max_length: int, tokenizer: PreTrainedTokenizerFast | None = None, shape: dict | None = None
) -> LlamaConfig:
    """The demo model's configuration (without a tokenizer, for its memory plan: no special ids);
    ``shape`` changes entries of MODEL_SHAPE."""
    special = (
        {}
        if tokenizer is None
        else {
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        }
    )
    return LlamaConfig(
        vocab_size=vocab_size,
        max_position_embeddings=max_length,
        tie_word_embeddings=False,
        **special,
        **(MODEL_SHAPE | (shape or {})),
    )


@torch_threads(1)  # sums in one order on any machine: the same bytes on 2 cores or 64
def train_demo_model(
    corpus_files: list[Path],
    out_dir: Path,
    *,
    max_length: int = 256,
    steps: int = 600,
    batch_size: int = 8,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    shape: dict | None = None,
    device: str = "cpu",
    watch: Callable[[int, LlamaForCausalLM, PreTrainedTokenizerFast], None] | None = None,
) -> dict:
    """Train a tokenizer and a tiny LlamaForCausalLM on the corpus for `steps` optimizer steps;
    save both to out_dir and return the training summary (also saved as training.json).

    The checkpoint is written under a temporary name and renamed, so a killed run leaves none.
    training.json records the steps and losses, nothing machine-dependent, so that its bytes
    depend on the inputs alone; training runs on one thread, so that the weights do too.
    ``shape`` and ``device`` serve benches that train wider models (MODEL_SHAPE's entries to
    change; where to train); ``watch`` sees the model after each step (to measure its answers
    while it trains) and must leave it as it found it.
    """
    if steps < 1 or batch_size < 1:
        raise InputError(f"steps ({steps}) and batch_size ({batch_size}) must be at least 1")
    torch.manual_seed(seed)
    records = [r for f in corpus_files for r in read_records(str(f))]
    texts = [r["text"] for r in records]
    tokenizer = train_tokenizer(texts)
    docs = _documents(texts, tokenizer)
    docs = [d for r, d in zip(records, docs) for _ in range(EPOCH_COPIES.get(r.get("source"), 1))]
    if sum(len(d) for d in docs) < batch_size * max_length:
        raise InputError(
            f"the corpus has fewer than batch_size x max_length = {batch_size * max_length} "
            "tokens; add documents or lower max_length"
        )
    tokenizer.model_max_length = max_length  # after encoding, which keeps documents whole
    model = LlamaForCausalLM(demo_model_config(len(tokenizer), max_length, tokenizer, shape)).to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=LEARNING_RATE, betas=(0.9, 0.95), weight_decay=0.01, foreach=True
    )
    batches = _batches(docs, max_length, batch_size, torch.Generator().manual_seed(seed))

    model.train()
    losses: list[float] = []
    for step, batch in enumerate(itertools.islice(batches, steps)):
        for group in optimizer.param_groups:
            group["lr"] = LEARNING_RATE * _lr_factor(step, step / steps)
        batch = batch.to(device)
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if progress is not None:
            progress(step + 1, steps)
        if watch is not None:
            watch(step + 1, model, tokenizer)

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.eval()
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    summary = {
        "steps": len(losses),
        "initial_loss": losses[0],
        "final_loss": sum(losses[-_FINAL_LOSS_WINDOW:]) / len(losses[-_FINAL_LOSS_WINDOW:]),
        "losses": [round(x, 4) for x in losses],
        "documents": len(docs),
        "corpus_tokens": sum(len(d) for d in docs),
        "tokens_seen": len(losses) * batch_size * max_length,
        "max_length": max_length,
        "batch_size": batch_size,
        "seed": seed,
    }
    (tmp / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    _replace_dir(tmp, out_dir)
    return summary
