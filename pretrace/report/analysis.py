"""Every table of the report, from merged statistics, merged top lists and the queries table.

Query kinds fall into three categories: factual (``factual_kinds``), control (``control_kinds``)
and reasoning (every other kind: arithmetic, slope, linear, or a user's own). Per-kind tables
list factual kinds first, then reasoning kinds, then controls, and add a pooled "reasoning"
row when there are several reasoning kinds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import InputError
from ..statistics import ShardStatistics
from . import concentration as conc
from .correlation import CONTROL, FACTUAL, REASONING, GroupMeans, group_means, pair_groups, same_kind_permutation_test

POOLED = "reasoning (all)"


@dataclass(frozen=True)
class ReportConfig:
    k: int = 50  # top/bottom documents per query (at most the k the shards were summarized with)
    fractions: tuple[float, ...] = conc.FRACTIONS
    fit_ranks: int = conc.FIT_RANKS
    bootstrap: int = 2000
    permutations: int = 2000
    level: float = 0.95
    seed: int = 0
    factual_kinds: tuple[str, ...] = ("factual",)
    control_kinds: tuple[str, ...] = ("control",)
    html_rows: int = 10  # documents per query and side shown in the HTML (all k are in Parquet)

    def category(self, kind: str) -> str:
        if kind in self.factual_kinds:
            return FACTUAL
        if kind in self.control_kinds:
            return CONTROL
        return REASONING


@dataclass
class Analysis:
    """The report's content: tables (polars) plus the few arrays the figures need."""

    config: ReportConfig
    n_documents: int
    queries: pl.DataFrame  # id, kind, category, prompt, completion, answer, logprob, in kind order
    kind_order: list[str]
    top_documents: pl.DataFrame
    correlation: np.ndarray  # (Q, Q) in the order of `queries`
    correlation_groups: pl.DataFrame
    correlation_tests: pl.DataFrame
    magnitude: pl.DataFrame
    magnitude_kinds: pl.DataFrame
    magnitude_comparison: pl.DataFrame
    magnitude_fractions: pl.DataFrame  # positive influence of the top fraction of documents, per nat, by kind
    concentration: pl.DataFrame
    concentration_kinds: pl.DataFrame
    power_law: pl.DataFrame
    power_law_kinds: pl.DataFrame
    answers: pl.DataFrame
    answers_kinds: pl.DataFrame
    sources: pl.DataFrame
    corpus_sources: dict[str, int]
    stats: ShardStatistics = field(repr=False)  # merged statistics, queries in `queries` order

    def tables(self) -> dict[str, pl.DataFrame]:
        """The tables written as Parquet, by file stem."""
        ids = self.queries["id"].to_list()
        pairs = pl.DataFrame({
            "query_a": np.repeat(ids, len(ids)).tolist(), "query_b": ids * len(ids),
            "r": self.correlation.ravel().tolist(),
        })
        return {
            "queries": self.queries, "top_documents": self.top_documents, "correlations": pairs,
            "correlation_groups": self.correlation_groups, "correlation_tests": self.correlation_tests,
            "magnitude": self.magnitude, "magnitude_kinds": self.magnitude_kinds,
            "magnitude_comparison": self.magnitude_comparison, "magnitude_fractions": self.magnitude_fractions,
            "concentration": self.concentration,
            "concentration_kinds": self.concentration_kinds, "power_law": self.power_law,
            "power_law_kinds": self.power_law_kinds, "answers": self.answers, "answers_kinds": self.answers_kinds,
            "sources": self.sources,
        }


def _queries_frame(stats: ShardStatistics, queries: pa.Table, config: ReportConfig) -> pl.DataFrame:
    table = pl.from_arrow(queries)
    missing = sorted(set(stats.query_ids) - set(table["id"].to_list()))
    if missing:
        raise InputError(f"scored queries missing from the queries table (rescore the shards): {missing[:5]}")
    defaults = {"prompt": "", "completion": "", "answer": None, "logprob": float("nan")}
    for name, value in defaults.items():
        if name not in table.columns:
            table = table.with_columns(pl.lit(value).alias(name))
    table = table.filter(pl.col("id").is_in(stats.query_ids))
    categories = {kind: config.category(kind) for kind in table["kind"].unique().to_list()}
    table = table.with_columns(category=pl.col("kind").replace_strict(categories, return_dtype=pl.String))
    rank = {FACTUAL: 0, REASONING: 1, CONTROL: 2}
    table = table.with_columns(
        _c=pl.col("category").replace_strict(rank, return_dtype=pl.Int32),
        _o=pl.col("id").replace_strict({q: i for i, q in enumerate(stats.query_ids)}, return_dtype=pl.Int64),
    ).sort(["_c", "kind", "_o"]).drop(["_c", "_o"])
    return table.select(["id", "kind", "category", "prompt", "completion", "answer", "logprob"])


def _kind_order(queries: pl.DataFrame) -> list[str]:
    return list(dict.fromkeys(queries["kind"].to_list()))


def _kind_groups(queries: pl.DataFrame) -> list[tuple[str, str, np.ndarray]]:
    """(label, category, row mask) per kind, plus the pooled reasoning row when useful."""
    kinds = queries["kind"].to_numpy()
    cats = queries["category"].to_numpy()
    out = [(k, cats[kinds == k][0], kinds == k) for k in _kind_order(queries)]
    if len({k for k, c, _ in out if c == REASONING}) > 1:
        factual_end = sum(1 for _, c, _ in out if c == FACTUAL)
        last_reasoning = factual_end + sum(1 for _, c, _ in out if c == REASONING)
        out.insert(last_reasoning, (POOLED, REASONING, cats == REASONING))
    return out


def mean_interval(values: np.ndarray, draws: int, level: float, rng: np.random.Generator) -> tuple[float, float, float]:
    """Mean and percentile-bootstrap interval of the mean of finite values (NaN if none)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    if v.size == 1:
        return float(v[0]), float("nan"), float("nan")
    boot = v[rng.integers(0, v.size, size=(draws, v.size))].mean(axis=1)
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return float(v.mean()), float(lo), float(hi)


def _median(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    return float(np.median(values)) if values.size else math.nan


def wilson(successes: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion."""
    if trials == 0:
        return float("nan"), float("nan")
    z = {0.9: 1.6449, 0.95: 1.96, 0.99: 2.5758}.get(level, 1.96)
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return max(0.0, centre - half), min(1.0, centre + half)


def analyze(stats: ShardStatistics, top: pa.Table, queries: pa.Table, config: ReportConfig = ReportConfig()) -> Analysis:
    """All tables of the report."""
    stored_k = int(pc.max(top.column("rank")).as_py() or 0) if top.num_rows else 0
    if stored_k < config.k:  # the shards were summarized with a smaller k: report what there is
        config = replace(config, k=stored_k)
    qf = _queries_frame(stats, queries, config)
    ids = qf["id"].to_list()
    stats = stats.select(ids)
    kinds, cats = qf["kind"].to_list(), qf["category"].to_list()
    kind_of = dict(zip(ids, kinds))
    rng = lambda salt: np.random.default_rng([config.seed, salt])  # noqa: E731
    groups = _kind_groups(qf)

    # 1. top and bottom documents
    top_df = (
        pl.from_arrow(top).filter(pl.col("rank") <= config.k)
        .join(qf.select(["id", "kind", "prompt", "completion"]).rename({"id": "query_id"}), on="query_id", how="inner")
        .with_columns(_o=pl.col("query_id").replace_strict({q: i for i, q in enumerate(ids)}, return_dtype=pl.Int64))
        .sort(["_o", "side", "rank"], descending=[False, True, False]).drop("_o")
        .select(["query_id", "kind", "prompt", "completion", "side", "rank", "doc_id", "source", "score", "excerpt",
                 "answer_found", "intermediates_found"])
    )

    # 2. correlations
    r = stats.correlation()
    masks = pair_groups(kinds, cats)
    gm = group_means(r, masks, kinds, config.bootstrap, config.seed)
    corr_groups = pl.DataFrame([
        {"group": name, "pairs": gm.pairs[name], "mean_r": gm.means[name],
         "ci_low": gm.interval(name, config.level)[0], "ci_high": gm.interval(name, config.level)[1]}
        for name in masks
    ], schema={"group": pl.String, "pairs": pl.Int64, "mean_r": pl.Float64, "ci_low": pl.Float64, "ci_high": pl.Float64})
    corr_tests = _correlation_tests(r, kinds, cats, gm, config)

    # 3. magnitude per nat
    nats = -qf["logprob"].cast(pl.Float64).to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        nats_ok = np.where(nats > 1e-9, nats, np.nan)
        magnitude = pl.DataFrame({
            "query_id": ids, "kind": kinds, "category": cats, "nats": nats,
            "positive": stats.positive_sum, "absolute": stats.abs_sum,
            "positive_per_nat": stats.positive_sum / nats_ok, "absolute_per_nat": stats.abs_sum / nats_ok,
        })
    mag_rows = []
    for label, cat, mask in groups:
        row = {"kind": label, "category": cat, "queries": int(mask.sum())}
        for col in ("positive_per_nat", "absolute_per_nat"):
            m, lo, hi = mean_interval(magnitude[col].to_numpy()[mask], config.bootstrap, config.level, rng(3))
            row |= {f"{col}_mean": m, f"{col}_ci_low": lo, f"{col}_ci_high": hi,
                    f"{col}_median": _median(magnitude[col].to_numpy()[mask])}
        mag_rows.append(row)
    magnitude_kinds = pl.DataFrame(mag_rows)
    magnitude_comparison = _ratio_comparison(magnitude, config, rng(4))

    # 4. concentration
    share_rows = conc.shares(stats, config.fractions)
    concentration = pl.DataFrame(share_rows).with_columns(
        kind=pl.col("query_id").replace_strict(kind_of, return_dtype=pl.String)
    ).select(["query_id", "kind", "fraction", "documents", "share", "share_error", "exact"])
    conc_rows = []
    for label, cat, mask in groups:
        members = set(np.asarray(ids)[mask])
        for f in config.fractions:
            sub = concentration.filter(pl.col("query_id").is_in(members) & (pl.col("fraction") == f))
            m, lo, hi = mean_interval(sub["share"].to_numpy(), config.bootstrap, config.level, rng(5))
            conc_rows.append({"kind": label, "category": cat, "fraction": f, "documents": int(sub["documents"].max() or 0),
                              "mean_share": m, "ci_low": lo, "ci_high": hi,
                              "max_share_error": float(sub["share_error"].max() or 0.0)})
    concentration_kinds = pl.DataFrame(conc_rows)
    per_nat = concentration.join(magnitude.select(["query_id", "positive_per_nat"]), on="query_id").with_columns(
        top_per_nat=pl.col("share") * pl.col("positive_per_nat"))
    frac_rows = []
    for label, cat, mask in groups:
        members = set(np.asarray(ids)[mask])
        for f in config.fractions:
            v = per_nat.filter(pl.col("query_id").is_in(members) & (pl.col("fraction") == f))["top_per_nat"].to_numpy()
            m, lo, hi = mean_interval(v, config.bootstrap, config.level, rng(7))
            frac_rows.append({"kind": label, "category": cat, "fraction": f, "mean_per_nat": m, "ci_low": lo,
                              "ci_high": hi})
    magnitude_fractions = pl.DataFrame(frac_rows, schema={"kind": pl.String, "category": pl.String,
                                                          "fraction": pl.Float64, "mean_per_nat": pl.Float64,
                                                          "ci_low": pl.Float64, "ci_high": pl.Float64})
    power_law = pl.DataFrame(conc.power_laws(stats, config.fit_ranks)).with_columns(
        kind=pl.col("query_id").replace_strict(kind_of, return_dtype=pl.String)
    ).select(["query_id", "kind", "slope", "intercept", "r2", "ranks"])
    pl_rows = []
    for label, cat, mask in groups:
        slope, lo, hi = mean_interval(power_law["slope"].to_numpy()[mask], config.bootstrap, config.level, rng(6))
        r2 = power_law["r2"].to_numpy()[mask]
        pl_rows.append({"kind": label, "category": cat, "queries": int(mask.sum()), "mean_slope": slope,
                        "ci_low": lo, "ci_high": hi,
                        "mean_r2": float(np.nanmean(r2)) if np.isfinite(r2).any() else math.nan})
    power_law_kinds = pl.DataFrame(pl_rows)

    # 5. answers in the top documents
    answers = _answers(stats, top_df, qf)
    answers_kinds = _answers_by_kind(answers, groups, ids, config)

    # 6. sources
    sources = _sources(stats, top_df, groups, ids)

    return Analysis(
        config, stats.n, qf, _kind_order(qf), top_df, r, corr_groups, corr_tests, magnitude, magnitude_kinds,
        magnitude_comparison, magnitude_fractions, concentration, concentration_kinds, power_law, power_law_kinds, answers, answers_kinds,
        sources, dict(stats.sources), stats,
    )


def _correlation_tests(r: np.ndarray, kinds: list[str], cats: list[str], gm: GroupMeans, config: ReportConfig) -> pl.DataFrame:
    rows = []
    for a, b in (("same reasoning kind", "different reasoning kinds"), ("same reasoning kind", "within factual"),
                 ("same reasoning kind", "control vs others"), ("within factual", "control vs others")):
        diff, lo, hi = gm.difference(a, b, config.level)
        p = math.nan
        if (a, b) == ("same reasoning kind", "different reasoning kinds"):
            _, p = same_kind_permutation_test(r, kinds, cats, config.permutations, config.seed)
        rows.append({"comparison": f"{a} - {b}", "difference": diff, "ci_low": lo, "ci_high": hi, "p_value": p})
    return pl.DataFrame(rows, schema={"comparison": pl.String, "difference": pl.Float64, "ci_low": pl.Float64,
                                      "ci_high": pl.Float64, "p_value": pl.Float64})


def _ratio_comparison(magnitude: pl.DataFrame, config: ReportConfig, rng: np.random.Generator) -> pl.DataFrame:
    """Mean influence per nat of reasoning queries over that of factual queries, with an interval."""
    rows = []
    for col in ("positive_per_nat", "absolute_per_nat"):
        f = magnitude.filter(pl.col("category") == FACTUAL)[col].to_numpy()
        r = magnitude.filter(pl.col("category") == REASONING)[col].to_numpy()
        f, r = f[np.isfinite(f)], r[np.isfinite(r)]
        ratio = lo = hi = math.nan
        if f.size and r.size and f.mean() > 0:
            ratio = float(r.mean() / f.mean())
            if f.size > 1 and r.size > 1:
                boot_f = f[rng.integers(0, f.size, size=(config.bootstrap, f.size))].mean(axis=1)
                boot_r = r[rng.integers(0, r.size, size=(config.bootstrap, r.size))].mean(axis=1)
                with np.errstate(divide="ignore", invalid="ignore"):
                    ratios = boot_r / boot_f
                lo, hi = (float(x) for x in np.quantile(ratios[np.isfinite(ratios)], [(1 - config.level) / 2,
                                                                                        (1 + config.level) / 2]))
        rows.append({"measure": col, "factual_queries": int(f.size), "reasoning_queries": int(r.size),
                     "factual_mean": float(f.mean()) if f.size else math.nan,
                     "reasoning_mean": float(r.mean()) if r.size else math.nan,
                     "reasoning_over_factual": ratio, "ci_low": lo, "ci_high": hi})
    return pl.DataFrame(rows)


def _answers(stats: ShardStatistics, top_df: pl.DataFrame, qf: pl.DataFrame) -> pl.DataFrame:
    top = top_df.filter(pl.col("side") == "top")
    corpus = stats.answer_docs()
    rows = []
    for q, row in enumerate(qf.iter_rows(named=True)):
        targets = stats.targets[q] or [""]
        answer, intermediates = targets[0], targets[1:]
        mine = top.filter(pl.col("query_id") == row["id"])
        k = mine.height
        found = mine["answer_found"].to_list()
        flags = mine["intermediates_found"].to_list()
        inter_any = [any(f[i] for f in flags if f is not None and i < len(f)) for i in range(len(intermediates))]
        inter_docs = sum(1 for f in flags if f and any(f))
        base = corpus[q][0] / stats.n if answer and stats.n else math.nan
        rows.append({
            "query_id": row["id"], "kind": row["kind"], "category": row["category"], "answer": answer or None,
            "top_k": k,
            "docs_with_answer": int(sum(bool(x) for x in found)) if answer else None,
            "answer_in_top": any(bool(x) for x in found) if answer else None,
            "corpus_docs_with_answer": int(corpus[q][0]) if answer else None,
            "expected_by_chance": k * base if answer else None,
            "intermediates": len(intermediates),
            "intermediates_in_top": int(sum(inter_any)),
            "docs_with_an_intermediate": inter_docs,
        })
    schema = {"query_id": pl.String, "kind": pl.String, "category": pl.String, "answer": pl.String, "top_k": pl.Int64,
              "docs_with_answer": pl.Int64, "answer_in_top": pl.Boolean, "corpus_docs_with_answer": pl.Int64,
              "expected_by_chance": pl.Float64, "intermediates": pl.Int64, "intermediates_in_top": pl.Int64,
              "docs_with_an_intermediate": pl.Int64}
    return pl.DataFrame(rows, schema=schema)


def _answers_by_kind(answers: pl.DataFrame, groups, ids: list[str], config: ReportConfig) -> pl.DataFrame:
    rows = []
    for label, cat, mask in groups:
        sub = answers.filter(pl.col("query_id").is_in(set(np.asarray(ids)[mask])))
        with_answer = sub.filter(pl.col("answer").is_not_null())
        n, hits = with_answer.height, int(with_answer["answer_in_top"].sum() or 0)
        lo, hi = wilson(hits, n, config.level)
        inter_total = int(sub["intermediates"].sum() or 0)
        inter_found = int(sub["intermediates_in_top"].sum() or 0)
        rows.append({
            "kind": label, "category": cat, "queries": sub.height, "queries_with_answer": n,
            "answer_in_top": hits, "share_answer_in_top": hits / n if n else math.nan, "ci_low": lo, "ci_high": hi,
            "mean_docs_with_answer": float(with_answer["docs_with_answer"].mean()) if n else math.nan,
            "mean_expected_by_chance": float(with_answer["expected_by_chance"].mean()) if n else math.nan,
            "intermediates": inter_total, "intermediates_in_top": inter_found,
            "share_intermediates_in_top": inter_found / inter_total if inter_total else math.nan,
        })
    return pl.DataFrame(rows)


def _sources(stats: ShardStatistics, top_df: pl.DataFrame, groups, ids: list[str]) -> pl.DataFrame:
    corpus = dict(stats.sources)
    total = sum(corpus.values())
    rows = []
    for label, cat, mask in groups:
        members = set(np.asarray(ids)[mask])
        for side in ("top", "bottom"):
            sub = top_df.filter((pl.col("side") == side) & pl.col("query_id").is_in(members))
            counts = dict(sub.group_by("source").len().iter_rows())
            n = sub.height
            for source in sorted(set(corpus) | set(counts)):
                share = counts.get(source, 0) / n if n else math.nan
                corpus_share = corpus.get(source, 0) / total if total else math.nan
                rows.append({"kind": label, "category": cat, "side": side, "source": source,
                             "count": counts.get(source, 0), "share": share, "corpus_share": corpus_share,
                             "ratio": share / corpus_share if corpus_share else math.nan})
    schema = {"kind": pl.String, "category": pl.String, "side": pl.String, "source": pl.String, "count": pl.Int64,
              "share": pl.Float64, "corpus_share": pl.Float64, "ratio": pl.Float64}
    return pl.DataFrame(rows, schema=schema)
