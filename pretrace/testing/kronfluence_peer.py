"""kronfluence set up to compute exactly what pretrace computes, shared by the peer test and the benchmark.

Importing this module does not import kronfluence (only `summed_task` does), so the data pieces
work where kronfluence is not installed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from pretrace.inputs.batching import collate

if TYPE_CHECKING:
    from kronfluence.task import Task


def summed_losses(model: torch.nn.Module, batch: dict, sample: bool = False) -> torch.Tensor:
    """(B,) summed next-token loss over the tokens `target_mask` marks (pretrace's definition).
    `sample`: labels drawn from the model's own distribution (the true Fisher) instead of the text."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    targets, mask = batch["input_ids"][:, 1:], batch["target_mask"][:, 1:]
    if sample:
        with torch.no_grad():
            probs = torch.softmax(logits.reshape(-1, logits.shape[-1]), dim=-1)
            targets = torch.multinomial(probs, 1).view_as(targets)
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    return (nll.view_as(targets) * mask).sum(dim=1)


def summed_task(module_names: list[str], sampled_labels: bool = False) -> Task:
    """A kronfluence Task with pretrace's losses on `module_names`. Without `sampled_labels` a
    request for sampled labels fails, so a comparison meant for the empirical Fisher cannot
    silently use the true one."""
    from kronfluence.task import Task  # noqa: F811 (the runtime import)

    class SummedLanguageModelling(Task):
        def compute_train_loss(self, batch, model, sample=False):
            assert sampled_labels or not sample, "this task was built for the empirical Fisher"
            return summed_losses(model, batch, sample).sum()

        def compute_measurement(self, batch, model):
            # Queries mark only their completion tokens as targets: the completion's loss.
            return summed_losses(model, batch).sum()

        def get_influence_tracked_modules(self):
            return module_names

        def get_attention_mask(self, batch):
            return batch["attention_mask"]

    return SummedLanguageModelling()


class Sequences(torch.utils.data.Dataset):
    """Token sequences with the index of their first target token (1: every token after <bos>)."""

    def __init__(self, sequences: list[list[int]], starts: list[int] | None = None):
        self.sequences, self.starts = sequences, starts

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, i: int) -> tuple[list[int], int]:
        return self.sequences[i], (1 if self.starts is None else self.starts[i])


def collate_fn(pad_id: int) -> Callable[[list[tuple[list[int], int]]], dict]:
    """A DataLoader collate_fn padding with `pad_id` through pretrace's own `collate`."""

    def collate_items(items):
        sequences, starts = zip(*items)
        batch = collate(list(sequences), pad_id, list(starts))
        return {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "target_mask": batch.target_mask}

    return collate_items
