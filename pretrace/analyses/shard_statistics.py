"""Per-shard statistics of a query x document score block, which merge into corpus-wide ones.

The report never rereads scores. When a shard is scored, :func:`summarize_shard` reduces its
(Q, N) score matrix to a :class:`ShardStatistics` of size independent of N (apart from the
fixed-length top lists) and a table of the shard's top and bottom k documents per query.
Every field is additive or a k-way merge, so shards reduce in any order, one at a time, and
memory stays bounded however many shards there are:

- ``n``, ``mean`` (Q,), ``comoment`` (Q, Q) = sum_d (s_qd - mean_q)(s_q'd - mean_q'): the
  sufficient statistics of the Pearson correlation between queries over documents. They are
  the centred form of (n, sums, cross-products) and merge with Chan et al.'s pairwise update,
  which avoids the cancellation of ``E[s s'] - E[s] E[s']`` when means are large.
- ``positive`` and ``negative``: a :class:`Tail` each, the positive scores and the magnitudes of
  the negative ones (Ruis et al. read both sides of every ranking). Per query: how many
  documents (``count``) and their summed magnitude (``total``); the L largest magnitudes,
  exact (``extreme``, L = ``exact_top``, default 1000, or the number of documents if fewer; the
  merge of per-shard lists is the corpus-wide list, so ranks 1..L are exact); and a histogram
  of the magnitudes in log-spaced bins ``[2^(b/B), 2^((b+1)/B))`` for integer b (B =
  ``bins_per_octave``, default 16; columns start at ``b = hist_offset``): per bin, how many
  documents and their sum. The bins are the same for every shard, so histograms merge by
  adding. They give sums beyond rank L with a proven error bound (``pretrace.analyses.concentration``).
- ``search``: each query's top ``search_depth`` (500) documents with a flag per answer and
  intermediate result (``pretrace.analyses.answer_search``): Ruis et al.'s answer search, merged exactly.
- ``sources``: documents per corpus source.
- ``targets`` / ``target_docs``: each query's answer and intermediate results (normalized,
  see ``pretrace.analyses.answers``) and how many documents contain each: the base rate at
  which an answer appears in a random document.

Stored by the ``influence_scores`` asset as ``influence_scores/<shard>.stats.safetensors``
(the arrays above as tensors; query_ids, n, the tails' hist_offset, exact_top, bins_per_octave,
sources and targets as JSON in the safetensors metadata, format version 3) and
``influence_scores/<shard>.top.parquet`` (`pretrace.analyses.top_documents.TOP_SCHEMA`: the shard's top and bottom k per
query with source, excerpt and answer flags). Size per shard: 8 Q^2 + 2 (4 Q L + 16 Q W) bytes
plus 2 Q k rows, independent of the number of documents.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow as pa
import torch

from pretrace.analyses.answer_search import DEPTH as SEARCH_DEPTH
from pretrace.analyses.answer_search import AnswerSearch
from pretrace.analyses.answers import documents_containing
from pretrace.analyses.top_documents import TOP_K, query_targets, score_array, top_documents_of
from pretrace.errors import InputError
from pretrace.store.serialization import pack, unpack

EXACT_TOP = 1000
BINS_PER_OCTAVE = 16
_CHUNK_ELEMENTS = 1 << 22  # float64 temporaries of summarize: 32 MB
_KIND = "shard_statistics"
_VERSION = 3
SIDES = ("positive", "negative")
MAX_SOURCES = 256  # per-source histograms beyond this many source names would grow with the corpus


def log_bins(values: np.ndarray, bins_per_octave: int) -> np.ndarray:
    """Bin index b of positive values: b = floor(B log2 v), so v lies in [2^(b/B), 2^((b+1)/B))."""
    return np.floor(np.log2(values) * bins_per_octave).astype(np.int64)


def bin_edges(bins: np.ndarray, bins_per_octave: int) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper edges of log bins, widened by 1e-12 to cover rounding in log2."""
    b = np.asarray(bins, dtype=np.float64)
    return 2.0 ** (b / bins_per_octave) * (1 - 1e-12), 2.0 ** ((b + 1) / bins_per_octave) * (1 + 1e-12)


@dataclass
class Tail:
    """One side of each query's scores: the positive scores, or the negated negative ones.

    Sources are codes into the sorted source names of the statistics that hold the tail, so the
    composition of the top k documents is exact for k up to the exact list's length and bounded
    beyond it by the per-source histogram (``pretrace.analyses.sources_at_k``). Past MAX_SOURCES
    names (a corpus whose `source` is, say, a URL) the histogram pools every source in one row,
    so memory stays bounded: the exact list keeps its sources, and beyond it no split is claimed.
    """

    count: np.ndarray  # (Q,) int64: documents on this side
    total: np.ndarray  # (Q,) float64: their summed magnitude
    extreme: np.ndarray  # (Q, min(exact_top, n)) float32: the largest signed magnitudes, descending
    extreme_source: np.ndarray  # (Q, min(exact_top, n)) int32: their sources' codes
    source_count: np.ndarray  # (Q, S, W) int64: documents per source and log bin
    hist_sum: np.ndarray  # (Q, W) float64: summed magnitude per log bin
    hist_offset: int = 0

    _ARRAYS = ("count", "total", "extreme", "extreme_source", "source_count", "hist_sum")

    @property
    def pooled(self) -> bool:
        """Whether the histogram pools every source in one row (more than MAX_SOURCES of them)."""
        return self.source_count.shape[1] == 1

    @property
    def hist_count(self) -> np.ndarray:
        """(Q, W) documents per log bin, every source together."""
        return self.source_count.sum(axis=1)

    @classmethod
    def start(cls, magnitudes: np.ndarray, codes: np.ndarray, sources: int, length: int, bins_per_octave: int) -> Tail:
        """The exact list and empty sums of a (Q, N) float32 block of signed magnitudes (this side's
        sign applied); :meth:`add` then counts its column chunks."""
        q = magnitudes.shape[0]
        offset, width = _histogram_range(magnitudes, bins_per_octave)
        rows = 1 if sources > MAX_SOURCES else sources
        return cls(
            np.zeros(q, np.int64),
            np.zeros(q),
            *_largest(magnitudes, codes, length),
            np.zeros((q, rows, width), np.int64),
            np.zeros((q, width)),
            offset,
        )

    def add(self, x: np.ndarray, codes: np.ndarray, bins_per_octave: int) -> None:
        """Count a float64 column chunk of magnitudes (this side's sign applied) and its sources."""
        q, sources, width = self.source_count.shape
        if sources == 1:  # one source, or pooled
            codes = np.zeros_like(codes)
        inside = x > 0
        self.total += np.where(inside, x, 0.0).sum(axis=1)
        self.count += inside.sum(axis=1)
        if width:
            rows, cols = np.nonzero(inside)
            values = x[rows, cols]
            bins = log_bins(values, bins_per_octave) - self.hist_offset
            cells = (rows * sources + codes[cols]) * width + bins
            self.source_count += np.bincount(cells, minlength=q * sources * width).reshape(q, sources, width)
            self.hist_sum += np.bincount(rows * width + bins, weights=values, minlength=q * width).reshape(q, width)

    def recoded(self, mapping: np.ndarray, sources: int, pool: bool) -> Tail:
        """The same tail with source codes mapped into a larger set of ``sources`` names, its
        histogram pooled into one row when ``pool``."""
        q, _, width = self.source_count.shape
        if pool:
            count = self.source_count.sum(axis=1, keepdims=True)
        else:
            count = np.zeros((q, sources, width), np.int64)
            count[:, mapping, :] = self.source_count
        return replace(self, extreme_source=mapping[self.extreme_source].astype(np.int32), source_count=count)

    def merge(self, other: Tail, length: int) -> Tail:
        """Both tails together; their source codes must already index the same names."""
        values = np.concatenate([self.extreme, other.extreme], axis=1)
        codes = np.concatenate([self.extreme_source, other.extreme_source], axis=1)
        order = _order(values, codes)[:, :length]
        rows = np.arange(values.shape[0])[:, None]
        offset, count, total = _merge_histograms(self, other)
        return Tail(
            self.count + other.count,
            self.total + other.total,
            np.ascontiguousarray(values[rows, order]),
            np.ascontiguousarray(codes[rows, order]),
            count,
            total,
            offset,
        )

    def select(self, index: list[int]) -> Tail:
        return Tail(*(getattr(self, name)[index] for name in self._ARRAYS), self.hist_offset)

    def tensors(self, side: str) -> dict[str, np.ndarray]:
        return {f"{side}.{name}": getattr(self, name) for name in self._ARRAYS}

    @classmethod
    def from_arrays(cls, t: dict[str, np.ndarray], side: str, offset: int) -> Tail:
        return cls(*(t[f"{side}.{name}"] for name in cls._ARRAYS), offset)


@dataclass
class ShardStatistics:
    """Mergeable statistics of the scores of a set of documents (one shard, or many merged)."""

    query_ids: list[str]
    n: int
    mean: np.ndarray  # (Q,) float64
    comoment: np.ndarray  # (Q, Q) float64
    positive: Tail
    negative: Tail
    search: AnswerSearch
    exact_top: int = EXACT_TOP
    search_depth: int = SEARCH_DEPTH
    bins_per_octave: int = BINS_PER_OCTAVE
    sources: dict[str, int] = field(default_factory=dict)
    targets: list[list[str]] = field(default_factory=list)  # per query: [answer, *intermediates]
    target_docs: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # flattened

    @property
    def positive_sum(self) -> np.ndarray:
        return self.positive.total

    @property
    def abs_sum(self) -> np.ndarray:
        return self.positive.total + self.negative.total

    @property
    def top_values(self) -> np.ndarray:
        """The L highest scores of each query, descending."""
        return self.positive.extreme

    def tail(self, side: str) -> Tail:
        if side not in SIDES:
            raise ValueError(f"side must be one of {SIDES}, got {side!r}")
        return self.positive if side == "positive" else self.negative

    # ----------------------------------------------------------------------------- building
    @classmethod
    def of(
        cls,
        query_ids: list[str],
        scores: torch.Tensor | np.ndarray,
        *,
        sources: list[str] | None = None,
        texts: list[str] | None = None,
        targets: list[list[str]] | None = None,
        doc_ids: list[str] | None = None,
        exact_top: int = EXACT_TOP,
        bins_per_octave: int = BINS_PER_OCTAVE,
        search_depth: int = SEARCH_DEPTH,
    ) -> ShardStatistics:
        """Statistics of a (Q, N) score matrix; ``texts`` and ``targets`` give the answer base rates
        and the answer search (whose ties ``doc_ids`` break)."""
        return cls._of_checked(
            query_ids,
            score_array(scores),
            sources=sources,
            texts=texts,
            targets=targets,
            doc_ids=doc_ids,
            exact_top=exact_top,
            bins_per_octave=bins_per_octave,
            search_depth=search_depth,
        )

    @classmethod
    def _of_checked(
        cls,
        query_ids: list[str],
        s32: np.ndarray,
        *,
        sources: list[str] | None,
        texts: list[str] | None,
        targets: list[list[str]] | None,
        doc_ids: list[str] | None,
        exact_top: int,
        bins_per_octave: int,
        search_depth: int,
    ) -> ShardStatistics:
        """:meth:`of` for a matrix :func:`_as_numpy` already checked, so callers check it only once."""
        q, n = s32.shape
        if len(query_ids) != q:
            raise InputError(f"{len(query_ids)} query ids for a score matrix of {q} rows")
        targets = [list(t) for t in targets] if targets is not None else [[] for _ in range(q)]
        flat = [t for ts in targets for t in ts]
        # Column chunks bound the float64 temporaries to about 32 MB whatever the shard size.
        step = max(1, _CHUNK_ELEMENTS // max(q, 1))
        mean = s32.sum(axis=1, dtype=np.float64) / n if n else np.zeros(q)
        names = sources if sources is not None else ["unknown"] * n
        source_counts = dict(sorted(Counter(names).items()))
        code_of = {name: i for i, name in enumerate(source_counts)}
        codes = np.fromiter((code_of[name] for name in names), np.int64, n)
        length = min(exact_top, n)
        tails = {
            side: Tail.start(sign * s32, codes, len(source_counts), length, bins_per_octave)
            for side, sign in zip(SIDES, (1, -1))
        }
        comoment = np.zeros((q, q))
        for a in range(0, n, step):  # one pass: each chunk is cast to float64 once
            x = s32[:, a : a + step].astype(np.float64)
            tails["positive"].add(x, codes[a : a + step], bins_per_octave)
            tails["negative"].add(-x, codes[a : a + step], bins_per_octave)
            x -= mean[:, None]
            comoment += x @ x.T
        target_docs = documents_containing(texts, flat) if texts is not None else np.zeros(len(flat), np.int64)
        search = AnswerSearch.of(s32, doc_ids, texts, targets, search_depth)
        return cls(
            list(query_ids),
            n,
            mean,
            comoment,
            tails["positive"],
            tails["negative"],
            search,
            exact_top,
            search_depth,
            bins_per_octave,
            source_counts,
            targets,
            target_docs.astype(np.int64),
        )

    # ------------------------------------------------------------------------------ merging
    def merge(self, other: ShardStatistics) -> ShardStatistics:
        """The statistics of both document sets together.

        Commutative and associative: counts, sources and top lists exactly, sums up to rounding.
        """
        if self.query_ids != other.query_ids:
            raise InputError(
                "cannot merge statistics of different query sets "
                f"({len(self.query_ids)} vs {len(other.query_ids)} queries); rescore the older shards"
            )
        if self.bins_per_octave != other.bins_per_octave:
            raise InputError("cannot merge histograms with different bins_per_octave; rescore the older shards")
        if self.targets != other.targets:
            raise InputError("the queries' answers changed between shards; rescore the older shards")
        n = self.n + other.n
        if self.n == 0 or other.n == 0:
            mean, comoment = (other.mean, other.comoment) if self.n == 0 else (self.mean, self.comoment)
        else:
            delta = other.mean - self.mean
            mean = self.mean + delta * (other.n / n)
            comoment = self.comoment + other.comoment + np.outer(delta, delta) * (self.n * other.n / n)
        exact_top = min(self.exact_top, other.exact_top)
        length = min(exact_top, n)
        search_depth = min(self.search_depth, other.search_depth)
        sources = dict(sorted((Counter(self.sources) + Counter(other.sources)).items()))
        names = np.array(list(sources), dtype=object)
        mine, theirs = (np.searchsorted(names, np.array(list(x.sources), dtype=object)) for x in (self, other))
        pool = (
            len(names) > MAX_SOURCES
            or (self.positive.pooled and len(self.sources) > 1)
            or (other.positive.pooled and len(other.sources) > 1)
        )
        tails = [
            a.recoded(mine, len(names), pool).merge(b.recoded(theirs, len(names), pool), length)
            for a, b in ((self.positive, other.positive), (self.negative, other.negative))
        ]
        return ShardStatistics(
            self.query_ids,
            n,
            mean,
            comoment,
            *tails,
            self.search.merge(other.search, search_depth),
            exact_top,
            search_depth,
            self.bins_per_octave,
            sources,
            self.targets,
            self.target_docs + other.target_docs,
        )

    # ----------------------------------------------------------------------------- results
    def correlation(self) -> np.ndarray:
        """(Q, Q) Pearson correlation of the queries' influence over all documents (NaN if constant)."""
        std = np.sqrt(np.clip(np.diag(self.comoment), 0, None))
        with np.errstate(invalid="ignore", divide="ignore"):
            r = self.comoment / np.outer(std, std)
        r = np.clip(r, -1.0, 1.0)
        np.fill_diagonal(r, np.where(std > 0, 1.0, np.nan))
        return r

    def answer_docs(self) -> list[list[int]]:
        """Per query, the number of documents containing each of its targets."""
        out, i = [], 0
        for ts in self.targets:
            out.append(self.target_docs[i : i + len(ts)].tolist())
            i += len(ts)
        return out

    # ------------------------------------------------------------------------ serialization
    def to_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        tensors = {
            "mean": self.mean,
            "comoment": self.comoment,
            "target_docs": self.target_docs,
            **self.positive.tensors("positive"),
            **self.negative.tensors("negative"),
            **self.search.tensors(),
        }
        return pack(
            {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in tensors.items()},
            _KIND,
            version=_VERSION,
            query_ids=self.query_ids,
            n=self.n,
            hist_offset={side: self.tail(side).hist_offset for side in SIDES},
            search_depth=self.search_depth,
            exact_top=self.exact_top,
            bins_per_octave=self.bins_per_octave,
            sources=self.sources,
            targets=self.targets,
        )

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> ShardStatistics:
        meta = unpack(metadata, _KIND)
        if meta.get("version") != _VERSION:
            raise InputError(
                f"shard statistics of format version {meta.get('version')!r}, expected {_VERSION}: "
                "rematerialize influence_scores for this shard"
            )
        t = {k: v.numpy() for k, v in tensors.items()}
        return cls(
            meta["query_ids"],
            meta["n"],
            t["mean"],
            t["comoment"],
            *(Tail.from_arrays(t, side, meta["hist_offset"][side]) for side in SIDES),
            AnswerSearch.from_arrays(t),
            meta["exact_top"],
            meta["search_depth"],
            meta["bins_per_octave"],
            meta["sources"],
            meta["targets"],
            t["target_docs"],
        )

    def select(self, query_ids: list[str]) -> ShardStatistics:
        """The statistics of a subset of the queries, in the given order."""
        index = [self.query_ids.index(q) for q in query_ids]
        offsets = np.cumsum([0] + [len(t) for t in self.targets])
        flat = [i for q in index for i in range(offsets[q], offsets[q + 1])]
        return replace(
            self,
            query_ids=list(query_ids),
            mean=self.mean[index],
            comoment=self.comoment[np.ix_(index, index)],
            positive=self.positive.select(index),
            negative=self.negative.select(index),
            search=self.search.select(index),
            targets=[self.targets[q] for q in index],
            target_docs=self.target_docs[flat],
        )


def _largest(s32: np.ndarray, codes: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``length`` largest values of each row, descending, and their source codes (ties: by code)."""
    q, n = s32.shape
    if length == 0:
        return np.zeros((q, 0), np.float32), np.zeros((q, 0), np.int32)
    index = np.argpartition(-s32, length - 1, axis=1)[:, :length] if length < n else np.tile(np.arange(n), (q, 1))
    rows = np.arange(q)[:, None]
    values, picked = s32[rows, index], codes[index]
    if length < n:  # values tied with the cut are interchangeable: keep those of the smallest codes
        cut = values.min(axis=1, keepdims=True)
        for row in np.nonzero((s32 == cut).sum(axis=1) > (values == cut).sum(axis=1))[0]:
            tied = np.nonzero(s32[row] == cut[row, 0])[0]
            kept = np.sort(codes[tied])[: int((values[row] == cut[row, 0]).sum())]
            picked[row, values[row] == cut[row, 0]] = kept
    order = _order(values, picked)
    return (np.ascontiguousarray(values[rows, order]), np.ascontiguousarray(picked[rows, order]).astype(np.int32))


def _order(values: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Per row, the indices that sort by value (descending), then code."""
    if values.shape[1] == 0:
        return np.zeros(values.shape, np.int64)
    return (
        np.stack([np.lexsort((c, -v)) for v, c in zip(values, codes)])
        if values.shape[0]
        else np.zeros(values.shape, np.int64)
    )


def _histogram_range(s32: np.ndarray, bins_per_octave: int) -> tuple[int, int]:
    """First log bin and number of bins spanned by the positive values ((0, 0) if there are none).

    The bin is monotone in the value, so only the smallest positive and the largest value are
    binned: no log2 over every score. They are binned as float64, like the chunks, so they agree.
    """
    highest = s32.max(initial=0.0)
    if highest <= 0:
        return 0, 0
    lo, hi = log_bins(np.array([_smallest_positive(s32), highest], np.float64), bins_per_octave).tolist()
    return lo, hi - lo + 1


def _smallest_positive(s32: np.ndarray) -> np.float32:
    """The smallest positive value of a finite float32 matrix holding one, without a masked pass.

    Positive floats order like their bit patterns; subtracting 1 wraps 0 to the largest pattern
    and leaves negatives (sign bit set) above every positive, so a plain integer minimum finds it
    (masked minima and np.where are many times slower on scores of random sign).
    """
    return ((s32.view(np.uint32) - np.uint32(1)).min() + np.uint32(1)).view(np.float32)


def _merge_histograms(a: Tail, b: Tail) -> tuple[int, np.ndarray, np.ndarray]:
    """Both tails' per-source histograms on one range of bins (their source axes already agree)."""
    widths = [(x.hist_offset, x.hist_sum.shape[1]) for x in (a, b) if x.hist_sum.shape[1]]
    if not widths:
        return 0, a.source_count.copy(), a.hist_sum.copy()
    lo = min(o for o, _ in widths)
    hi = max(o + w for o, w in widths)
    q, sources, _ = a.source_count.shape
    count, total = np.zeros((q, sources, hi - lo), np.int64), np.zeros((q, hi - lo))
    for x in (a, b):
        w = x.hist_sum.shape[1]
        if w:
            start = x.hist_offset - lo
            count[:, :, start : start + w] += x.source_count
            total[:, start : start + w] += x.hist_sum
    return lo, count, total


# ------------------------------------------------------------------------------ one shard
def summarize_shard(
    query_ids: list[str],
    doc_ids: list[str],
    scores: torch.Tensor | np.ndarray,
    documents: pa.Table | None = None,
    queries: pa.Table | None = None,
    *,
    k: int = TOP_K,
    exact_top: int = EXACT_TOP,
    bins_per_octave: int = BINS_PER_OCTAVE,
    shard: str = "",
) -> tuple[ShardStatistics, pa.Table]:
    """The statistics and the top/bottom-k table of one shard's (Q, N) scores.

    ``documents``: the shard's documents with columns doc_id, source, text (any order; the
    tokenized ``corpus_shards`` table); without it sources are "unknown" and no answer is searched.
    ``queries``: the queries table with id, answer, intermediates.
    """
    sources = texts = None
    if documents is not None:
        position = {d: i for i, d in enumerate(documents.column("doc_id").to_pylist())}
        missing = [d for d in doc_ids if d not in position]
        if missing:
            raise InputError(f"{len(missing)} scored documents are not in the shard's documents, e.g. {missing[0]!r}")
        index = [position[d] for d in doc_ids]
        names = documents.column_names
        if "source" in names:
            column = documents.column("source").to_pylist()
            sources = [column[i] or "unknown" for i in index]
        if "text" in names:
            column = documents.column("text").to_pylist()
            texts = [column[i] or "" for i in index]
    targets = query_targets(query_ids, queries)
    s32 = score_array(scores)  # checked once for both reductions
    stats = ShardStatistics._of_checked(
        query_ids,
        s32,
        sources=sources,
        texts=texts,
        targets=targets,
        doc_ids=doc_ids,
        exact_top=exact_top,
        bins_per_octave=bins_per_octave,
        search_depth=SEARCH_DEPTH,
    )
    top = top_documents_of(query_ids, doc_ids, s32, k, sources=sources, texts=texts, targets=targets, shard=shard)
    return stats, top


def fraction_rank(fraction: float, n: int) -> int:
    """How many documents the top ``fraction`` of ``n`` is: ceil(fraction n), at least 1."""
    return max(1, math.ceil(fraction * n - 1e-9))
