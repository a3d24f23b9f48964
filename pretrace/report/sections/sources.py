"""Where do influential documents come from? Each source's share of the top and bottom documents of
each kind, over its share of the corpus."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass

import numpy as np
import polars as pl
from matplotlib.figure import Figure

from pretrace.analyses.analysis import Analysis
from pretrace.analyses.cutoffs import PAPER_DOCUMENTS, WARN_FRACTION
from pretrace.analyses.kinds import POOLED
from pretrace.analyses.method_sources import method_source_shares, share_rows
from pretrace.analyses.shard_statistics import fraction_rank
from pretrace.analyses.sources_at_k import SOURCE_KS, source_counts
from pretrace.report.formatting import num, pct
from pretrace.report.html import figure, wide_table
from pretrace.report.plots import empty, png
from pretrace.report.section import Section
from pretrace.report.sections import top_documents

SIDES = ("top", "bottom")


@dataclass
class Sources:
    sources: pl.DataFrame  # per kind, side and source: count, share, corpus share and their ratio
    sources_at_k: pl.DataFrame  # the same at Ruis et al.'s k (50 ... 500,000) as counts and as corpus fractions
    sources_by_method: pl.DataFrame  # the same for influence, BM25, cosine and dot product, same queries and k
    sources_by_answer: pl.DataFrame  # `sources` for the queries the model answers correctly and those it does not


SHARE_SCHEMA = {
    "queries": pl.Int64,
    "side": pl.String,
    "source": pl.String,
    "count": pl.Int64,
    "share": pl.Float64,
    "corpus_share": pl.Float64,
    "ratio": pl.Float64,
}


def _shares(top: pl.DataFrame, ids: list[str], corpus: dict[str, int]) -> list[dict]:
    """Per side and source, the share of these queries' top (bottom) documents (every query
    pooled) from the source, over its corpus share."""
    rows = []
    for side in SIDES:
        sub = top.filter((pl.col("side") == side) & pl.col("query_id").is_in(ids))
        counts = dict(sub.group_by("source").len().iter_rows())
        rows += [{"queries": len(ids), "side": side, **r} for r in share_rows(counts, sub.height, corpus)]
    return rows


def compute(a: Analysis) -> Sources:
    """Counts and shares of each source among the top and bottom documents of each kind."""
    top = a.result(top_documents.compute).top_documents
    corpus = a.corpus_sources
    schema = {"kind": pl.String, "category": pl.String, **SHARE_SCHEMA}
    rows = [{**g.row(), **r} for g in a.groups for r in _shares(top, g.ids, corpus)]
    ids = np.asarray(a.queries["id"].to_list(), dtype=object)
    masks = a.answer_masks()
    checked = np.logical_or.reduce(list(masks.values())) if masks else None
    by_answer = [
        {**g.row(), "answered": label, **r}
        for g in a.groups
        if checked is not None and (g.mask & checked).any()
        for label, mine in masks.items()
        for r in _shares(top, ids[g.mask & mine].tolist(), corpus)
    ]
    rankings = (a.attribution or {}).get("rankings")
    by_method = method_source_shares(
        rankings
        if rankings is not None
        else pl.DataFrame(schema={"query_id": pl.String, "method": pl.String, "source": pl.String}),
        a.groups,
        a.corpus_sources,
    )
    return Sources(
        pl.DataFrame(rows, schema=schema),
        _at_k(a),
        by_method,
        pl.DataFrame(
            by_answer, schema={"kind": pl.String, "category": pl.String, "answered": pl.String, **SHARE_SCHEMA}
        ),
    )


def _cuts(n: int) -> list[tuple[str, int]]:
    """Ruis et al.'s k as counts (those the corpus has) and as the same fractions of their corpus
    (every one, at least one document): (how it was set, k)."""
    counts = [(f"{k} documents", k) for k in SOURCE_KS if k <= n] or [(f"{n} documents", n)]
    fractions = [
        (f"{pct(k / PAPER_DOCUMENTS, 3)} of the corpus", fraction_rank(k / PAPER_DOCUMENTS, n)) for k in SOURCE_KS
    ]
    return counts + fractions


def _at_k(a: Analysis) -> pl.DataFrame:
    """As Ruis et al.: each source's share of the top and of the bottom k documents of a kind's
    queries (every query's k pooled), at each k up to the corpus size, over its corpus share;
    exact within the exact top list, with bounds beyond it (``report.sources_at_k``)."""
    corpus = a.corpus_sources
    names, total = list(corpus), sum(corpus.values())
    corpus_share = np.array([corpus[s] / total for s in names]) if total else np.full(len(names), np.nan)
    rows = []
    for side in SIDES:
        for cut, k in _cuts(a.n_documents):
            counts = [source_counts(a.stats, q, k, side) for q in range(len(a.stats.query_ids))]
            for g in a.groups:
                mine = [c for c, member in zip(counts, g.mask) if member]
                slots = sum(c.documents for c in mine)
                estimate, low, high = (
                    np.sum([getattr(c, f) for c in mine], axis=0) if mine else np.zeros(len(names))
                    for f in ("estimate", "low", "high")
                )
                with np.errstate(invalid="ignore", divide="ignore"):
                    share = estimate / slots if slots else np.full(len(names), np.nan)
                for j, source in enumerate(names):
                    rows.append(
                        {
                            **g.row(),
                            "side": side,
                            "cutoff": cut,
                            "k": k,
                            "corpus_fraction": k / a.n_documents if a.n_documents else math.nan,
                            "documents": slots,
                            "source": source,
                            "count": float(estimate[j]),
                            "count_low": float(low[j]),
                            "count_high": float(high[j]),
                            "exact": all(c.exact for c in mine),
                            "share": float(share[j]),
                            "corpus_share": float(corpus_share[j]),
                            "ratio": float(share[j] / corpus_share[j]) if corpus_share[j] else math.nan,
                        }
                    )
    schema = {
        "kind": pl.String,
        "category": pl.String,
        "side": pl.String,
        "cutoff": pl.String,
        "k": pl.Int64,
        "corpus_fraction": pl.Float64,
        "documents": pl.Int64,
        "source": pl.String,
        "count": pl.Float64,
        "count_low": pl.Float64,
        "count_high": pl.Float64,
        "exact": pl.Boolean,
        "share": pl.Float64,
        "corpus_share": pl.Float64,
        "ratio": pl.Float64,
    }
    return pl.DataFrame(rows, schema=schema)


def reading(a: Analysis) -> list[str]:
    if len(a.corpus_sources) < 2:
        names = ", ".join(a.corpus_sources) or "none"
        return [
            f"All documents come from one source ({names}), so there is no over- or under-representation to measure."
        ]
    out = []
    df = a.result(compute).sources.filter(
        (pl.col("side") == "top") & (pl.col("kind") != POOLED) & pl.col("ratio").is_finite()
    )
    for kind in a.kind_order:
        sub = df.filter((pl.col("kind") == kind) & (pl.col("count") > 0)).sort("ratio", descending=True)
        if sub.height == 0:
            continue
        best = sub.row(0, named=True)
        text = (
            f"In the top {a.config.k} of {kind} queries, {best['source']} is the most over-represented source: "
            f"{pct(best['share'])} of top documents against {pct(best['corpus_share'])} of the corpus "
            f"(\u00d7{num(best['ratio'])}{_by_answer(a, kind, best['source'])}{_baselines(a, kind, best['source'])})"
        )
        under = df.filter((pl.col("kind") == kind) & (pl.col("corpus_share") >= 0.05)).sort("ratio")
        if under.height and under.row(0, named=True)["source"] != best["source"]:
            worst = under.row(0, named=True)
            text += f"; {worst['source']} is the most under-represented (\u00d7{num(worst['ratio'])})"
        out.append(text + ".")
    if not out:
        out.append("No top documents to attribute to sources.")
    share = a.config.k / a.n_documents if a.n_documents else math.nan
    out.insert(
        0,
        f"The top {a.config.k} is {pct(share, 2)} of the corpus's {a.n_documents:,} documents"
        + (
            f", more than {pct(WARN_FRACTION, 0)} of it: over-representation in so wide a cut-off is diluted "
            "toward 1 and says little."
            if share > WARN_FRACTION
            else "."
        ),
    )
    out.append("A ratio above 1 means the source is more common among influential documents than in the corpus.")
    return out


def _by_answer(a: Analysis, kind: str, source: str) -> str:
    """The same source's ratio among the kind's queries the model answers correctly and among the
    others, with their numbers, if its answers were checked."""
    df = a.result(compute).sources_by_answer.filter(
        (pl.col("kind") == kind) & (pl.col("source") == source) & (pl.col("side") == "top")
    )
    parts = [
        f"\u00d7{num(r['ratio'])} among the {r['queries']} answered {r['answered']}"
        for r in df.iter_rows(named=True)
        if r["queries"]
    ]
    return "; " + ", ".join(parts) if parts else ""


def _baselines(a: Analysis, kind: str, source: str) -> str:
    """The same source's ratio in the baselines' top k of the kind (same queries, same k), if known."""
    df = a.result(compute).sources_by_method.filter(
        (pl.col("kind") == kind) & (pl.col("source") == source) & (pl.col("method") != "influence")
    )
    if df.is_empty():
        return "; no BM25 or gradient-cosine ranking to compare with"
    k = int(df["k"].max())
    ratios = ", ".join(f"{r['method']} \u00d7{num(r['ratio'])}" for r in df.iter_rows(named=True))
    return f"; in the baselines' top {k} of the same queries: {ratios}"


def plot(a: Analysis) -> bytes:
    """Over/under-representation (log2 ratio) of each source in the top and bottom k of each kind."""
    df = a.result(compute).sources.filter(pl.col("kind") != POOLED)
    names = sorted(set(df["source"].to_list()))
    rows = [(k, s) for k in a.kind_order for s in SIDES]
    fig = Figure(figsize=(max(6, 1.1 * len(names) + 2.5), 0.42 * max(len(rows), 2) + 1.6))
    ax = fig.add_subplot()
    if not names or not rows:
        empty(ax)
        return png(fig)
    grid = np.full((len(rows), len(names)), np.nan)
    ratios = {(r["kind"], r["side"], r["source"]): r["ratio"] for r in df.to_dicts()}
    for i, (k, side) in enumerate(rows):
        for j, s in enumerate(names):
            v = ratios.get((k, side, s))
            if v is not None and math.isfinite(v):
                grid[i, j] = v
    with np.errstate(divide="ignore"):
        logs = np.log2(np.where(grid > 0, grid, 1 / 16))
    image = ax.imshow(np.clip(np.nan_to_num(logs), -4, 4), cmap="PuOr_r", vmin=-4, vmax=4, aspect="auto")
    fig.colorbar(image, ax=ax, label="log2(share in top/bottom k ÷ share in corpus)")
    for i in range(len(rows)):
        for j in range(len(names)):
            if math.isfinite(grid[i, j]):
                dark = abs(np.clip(logs[i, j], -4, 4)) > 2.5
                ax.text(
                    j, i, f"{grid[i, j]:.2g}", ha="center", va="center", fontsize=7, color="white" if dark else "black"
                )
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), [f"{k} · {s}" for k, s in rows])
    ax.set_title("Sources of influential documents relative to the corpus")
    return png(fig)


def _ratio_wide(df: pl.DataFrame, row: pl.Expr) -> pl.DataFrame:
    """Rows named by ``row``, a column per source, cells "ratio to the corpus share (count)"."""
    cells = df.with_columns(
        cell=pl.struct(["ratio", "count"]).map_elements(
            lambda r: f"\u00d7{num(r['ratio'])} ({r['count']})", return_dtype=pl.String
        ),
        row=row,
    )
    return cells.pivot(on="source", index="row", values="cell", maintain_order=True).rename({"row": "kind"})


def body(a: Analysis, figs: dict[str, bytes]) -> str:
    wide = _ratio_wide(a.result(compute).sources.filter(pl.col("side") == "top"), pl.col("kind"))
    corpus = a.corpus_sources
    total = sum(corpus.values()) or 1
    return (
        figure(
            "sources",
            figs["sources"],
            "Share of each source among the top and bottom documents of each kind, divided by its share of the corpus.",
        )
        + "<p>Top documents: ratio to the corpus share (count). Corpus: "
        + html.escape(", ".join(f"{s} {pct(c / total)}" for s, c in corpus.items()))
        + "</p>"
        + wide_table(wide)
        + _by_answer_html(a)
        + "<p>As Ruis et al. (2024) compare them: each source's share of the top and of the bottom k documents "
        "(every query of a kind pooled) over its corpus share, at k = 50, 500, 5,000, 50,000 and 500,000 "
        "(those the corpus has); counts beyond the exact top list are estimates within stated bounds "
        "(sources_at_k.parquet), and at the same fractions of this corpus as those k are of their 5 million "
        "documents.</p>" + wide_table(_at_k_wide(a)) + _by_method_html(a)
    )


def _by_answer_html(a: Analysis) -> str:
    """The top documents' source ratios split by whether the model answers the query correctly."""
    df = a.result(compute).sources_by_answer.filter((pl.col("side") == "top") & (pl.col("queries") > 0))
    if df.is_empty():
        return ""
    wide = _ratio_wide(
        df, pl.format("{} · answered {} (n = {})", pl.col("kind"), pl.col("answered"), pl.col("queries"))
    )
    return (
        "<p>The same, for the queries the model answers correctly and those it does not (its own greedy answers; "
        "sources_by_answer.parquet).</p>" + wide_table(wide)
    )


def _by_method_html(a: Analysis) -> str:
    """Influence's source ratios beside BM25's, gradient cosine's and dot product's (same queries, same k)."""
    df = a.result(compute).sources_by_method
    if df.is_empty():
        return "<p>No baseline rankings (the attribution check's rankings.parquet) to set beside influence's.</p>"
    wide = _ratio_wide(df, pl.format("{} · {}", pl.col("kind"), pl.col("method")))
    k = int(df["k"].max())
    return (
        f"<p>Each method's top {k} (the attribution check's k; {pct(k / a.n_documents if a.n_documents else math.nan, 2)} "
        "of the corpus), same queries: ratio to the corpus share (count). A source that BM25 (word overlap) or "
        "gradient cosine over-represents as much as influence does is not evidence about influence "
        "(sources_by_method.parquet).</p>" + wide_table(wide)
    )


def _at_k_wide(a: Analysis) -> pl.DataFrame:
    """Ratios to the corpus share by kind, side and k (rows) and source (columns)."""
    df = a.result(compute).sources_at_k.with_columns(
        cell=pl.struct(["ratio", "exact"]).map_elements(
            lambda r: f"×{num(r['ratio'])}" + ("" if r["exact"] else " (est.)"), return_dtype=pl.String
        ),
        row=pl.format("{} · {} {} (k = {})", pl.col("kind"), pl.col("side"), pl.col("cutoff"), pl.col("k")),
    )
    return df.pivot(on="source", index="row", values="cell", maintain_order=True).rename({"row": "kind"})


def headline(a: Analysis) -> dict[str, pl.DataFrame]:
    top = a.result(compute).sources.filter((pl.col("side") == "top") & (pl.col("kind") != POOLED))
    return {
        "sources": top.sort("ratio", descending=True, nulls_last=True)
        .head(20)
        .select(["kind", "source", "count", "share", "corpus_share", "ratio"])
    }


SECTION = Section(
    "sources",
    "Where do influential documents come from?",
    body,
    reading,
    figures={"sources": plot},
    compute=compute,
    headline=headline,
)
