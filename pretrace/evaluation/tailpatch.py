"""Tail-patch evaluation: does training on the documents a method ranks first raise the
probability of the query's completion?

Agreement with another EK-FAC implementation shows the approximation is computed right, not
that the documents it ranks first cause the answer. TrackStar's tail-patch test measures that:
take one small training step on a query's top-k documents (the model's own loss, the mean
next-token cross-entropy, plain SGD at a fixed learning rate, from the model's weights) and
measure the change in log p(completion | prompt). A ranking whose top documents give a larger
gain than k random documents, or than the top-k of cheaper retrievers (BM25 over the text,
cosine of raw gradients), is evidence that it finds the documents that matter.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from torch.func import functional_call

from pretrace.errors import InputError
from pretrace.inputs.batching import collate
from pretrace.model.adapter import LoadedModel


def completion_logprob(
    lm: LoadedModel, sequence: Sequence[int], start: int, parameters: dict[str, torch.Tensor] | None = None
) -> float:
    """log p(sequence[start:] | sequence[:start]) in nats, with the model's weights or ``parameters``."""
    batch = collate([sequence], lm.pad_token_id, [start]).to(lm.device)
    with torch.no_grad():
        return -float(_mean_loss(lm, batch, parameters, summed=True))


def tail_patch_gain(
    lm: LoadedModel, documents: Sequence[Sequence[int]], query: Sequence[int], start: int, learning_rate: float
) -> float:
    """The change in log p(completion | prompt) after one SGD step on ``documents``.

    The step is θ' = θ − lr ∇θ L, with L the documents' mean next-token loss over every
    parameter the model trains; the model's own weights are never modified.
    """
    return stepped_logprob(lm, documents, query, start, learning_rate) - completion_logprob(lm, query, start)


def stepped_logprob(
    lm: LoadedModel, documents: Sequence[Sequence[int]], query: Sequence[int], start: int, learning_rate: float
) -> float:
    """log p(completion | prompt) after the step `tail_patch_gain` describes."""
    if not documents:
        raise InputError("tail-patch: no documents to train on")
    params = {name: p.detach().requires_grad_(True) for name, p in lm.model.named_parameters()}
    batch = collate(list(documents), lm.pad_token_id).to(lm.device)
    grads = torch.autograd.grad(_mean_loss(lm, batch, params), list(params.values()), allow_unused=True)
    stepped = {
        name: (p - learning_rate * g if g is not None else p).detach() for (name, p), g in zip(params.items(), grads)
    }
    return completion_logprob(lm, query, start, stepped)


def _mean_loss(
    lm: LoadedModel, batch, parameters: dict[str, torch.Tensor] | None, summed: bool = False
) -> torch.Tensor:
    """Next-token cross-entropy over the batch's targets: mean (training's loss) or summed."""
    inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
    with lm.autocast():
        if parameters is None:
            logits = lm.model(**inputs).logits
        else:
            logits = functional_call(lm.model, parameters, args=(), kwargs=inputs)
            logits = logits.logits
    logits = logits[:, :-1].float()
    targets = batch.input_ids[:, 1:]
    mask = batch.target_mask[:, 1:]
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    total = (nll.view_as(targets) * mask).sum()
    return total if summed else total / mask.sum().clamp_min(1)


# ---------------------------------------------------------------- the rankings compared
def top_k_random(n_documents: int, k: int, seed: int) -> list[int]:
    """k distinct document indices drawn uniformly (the floor any method must clear)."""
    return np.random.default_rng(seed).choice(n_documents, size=min(k, n_documents), replace=False).tolist()


def top_k_gradient(
    query: dict[str, torch.Tensor], documents: dict[str, torch.Tensor], k: int, normalise: bool = True
) -> list[int]:
    """Indices of the k documents whose gradients have the largest cosine with the query's
    (raw, unpreconditioned) gradient, over all layers together: TrackStar's ranking without its
    optimizer-state normalisation; with ``normalise=False``, the largest dot product (identity
    influence, what one SGD step's first-order effect is)."""
    layers = sorted(query)
    q = torch.cat([query[name].reshape(-1).double() for name in layers])
    d = torch.cat([documents[name].reshape(documents[name].shape[0], -1).double() for name in layers], dim=1)
    values = d @ q
    if normalise:
        values = values / (d.norm(dim=1) * q.norm()).clamp_min(1e-300)
    return _best(values.numpy(), k)


class BM25Index:
    """BM25 over the documents' text (the `bm25s` package): FTRACE found this lexical baseline
    retrieves fact sources as well as gradient methods, so attribution must beat it."""

    def __init__(self, texts: Sequence[str]) -> None:
        import bm25s

        self._bm25s = bm25s
        self._index = bm25s.BM25()
        self._index.index(bm25s.tokenize(list(texts), stopwords="en", show_progress=False), show_progress=False)

    def scores(self, text: str) -> np.ndarray:
        """BM25 (Lucene's variant, k1 = 1.5, b = 0.75) of every document for the query text."""
        (words,) = self._bm25s.tokenize([text], stopwords="en", return_ids=False, show_progress=False)
        return np.asarray(self._index.get_scores(words), dtype=np.float64)

    def top_k(self, text: str, k: int) -> list[int]:
        return _best(self.scores(text), k)


def _best(values: np.ndarray, k: int) -> list[int]:
    """Indices of the k largest values, ties broken by index."""
    order = np.lexsort((np.arange(values.size), -values))
    return order[: min(k, values.size)].tolist()


# ---------------------------------------------------------------- one evaluation


def evaluate(
    lm: LoadedModel,
    queries: Sequence[tuple[str, str, Sequence[int], int]],
    documents: Sequence[Sequence[int]],
    rankings: dict[str, Sequence[Sequence[int]]],
    learning_rate: float,
    progress: Callable[[int], None] | None = None,
) -> pa.Table:
    """The tail-patch gain of every (query, method): one row each.

    ``queries``: (id, kind, prompt+completion ids, completion start); ``rankings[method][q]``:
    the indices into ``documents`` of query q's top-k under that method. Methods that choose the
    same documents for a query share one step (the step's loss is a mean over the set, so their
    gains agree up to the float rounding of the batch order): a variant close to another costs
    only where it differs.
    """
    rows: dict[str, list] = {"query_id": [], "kind": [], "method": [], "k": [], "gain": []}
    for q, (query_id, kind, sequence, start) in enumerate(queries):
        before = completion_logprob(lm, sequence, start)  # once per query, not per method
        stepped: dict[frozenset[int], float] = {}
        for method, ranking in rankings.items():
            chosen = frozenset(ranking[q])
            if chosen not in stepped:
                stepped[chosen] = stepped_logprob(
                    lm, [documents[i] for i in ranking[q]], sequence, start, learning_rate
                )
            rows["query_id"].append(query_id)
            rows["kind"].append(kind)
            rows["method"].append(method)
            rows["k"].append(len(ranking[q]))
            rows["gain"].append(stepped[chosen] - before)
        if progress is not None:
            progress(1)
    return pa.table(rows, schema=GAIN_SCHEMA)


GAIN_SCHEMA = pa.schema(
    [
        ("query_id", pa.string()),
        ("kind", pa.string()),
        ("method", pa.string()),
        ("k", pa.int32()),
        ("gain", pa.float64()),
    ]
)


def summarize(gains: pa.Table, seed: int = 0, draws: int = 2000, level: float = 0.95) -> pa.Table:
    """Mean gain per method and query kind (and over all queries, kind "all"), with a
    percentile-bootstrap interval, and the share of queries where the method beat random."""
    from pretrace.analyses.intervals import mean_interval

    rows = gains.to_pylist()
    random_gain = {r["query_id"]: r["gain"] for r in rows if r["method"] == "random"}
    kinds = ["all", *sorted({r["kind"] for r in rows})]
    out: dict[str, list] = {
        "method": [],
        "kind": [],
        "queries": [],
        "mean_gain": [],
        "low": [],
        "high": [],
        "beats_random": [],
    }
    rng = np.random.default_rng(seed)
    for method in dict.fromkeys(r["method"] for r in rows):
        for kind in kinds:
            mine = [r for r in rows if r["method"] == method and kind in ("all", r["kind"])]
            if not mine:
                continue
            mean, low, high = mean_interval(np.array([r["gain"] for r in mine]), draws, level, rng)
            wins = [r["gain"] > random_gain[r["query_id"]] for r in mine if r["query_id"] in random_gain]
            out["method"].append(method)
            out["kind"].append(kind)
            out["queries"].append(len(mine))
            out["mean_gain"].append(mean)
            out["low"].append(low)
            out["high"].append(high)
            out["beats_random"].append(float(np.mean(wins)) if wins and method != "random" else float("nan"))
    return pa.table(out)
