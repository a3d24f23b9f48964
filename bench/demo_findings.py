"""The figures the docs quote from the demo's report, printed from its Parquet tables.

    python -m bench.demo_findings ./data     # the storage root of a finished `pretrace demo`

So the documented numbers are read from a file this command wrote, never typed from memory: the
model's training losses, top-20 source counts of each reasoning kind, the per-nat ratio, the
correlation groups, the factual kinds' sources, the paper-defined power-law test, influence-per-nat
curves, step-by-step answer search and sources at several k, how many queries the model answers
correctly, the comparison with other models (when `--compare-seeds` was given), the attribution
check (tail-patch and retrieval of known evidence, per kind), the answer search's positive control
(its detection rate), each shard's measured score accuracy, and the
planted documents' loss by how often their fact is stated.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import polars as pl

from bench.validation import detection_lines
from pretrace.analyses.kinds import POOLED

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("storage", help="the demo's storage root (its data/ folder)")
    args = parser.parse_args()
    report = Path(args.storage) / "influence_report"
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    print(f"# demo findings {time.strftime('%Y-%m-%d')}, commit {commit}, from {report}")
    training = json.loads((Path(args.storage) / "model" / "checkpoint" / "training.json").read_text())
    print(
        f"model_training: {training['steps']} steps, loss {training['initial_loss']:.2f} -> {training['final_loss']:.2f}"
    )
    sources = pl.read_parquet(report / "sources.parquet").filter(pl.col("side") == "top")
    for row in sources.sort(["kind", "source"]).iter_rows(named=True):
        print(f"top_{row['kind']}_{row['source']}: {row['count']} slots, {row['ratio']:.2f}x corpus share")
    by_answer = pl.read_parquet(report / "sources_by_answer.parquet").filter(
        (pl.col("side") == "top") & (pl.col("queries") > 0)
    )
    for row in by_answer.sort(["kind", "answered", "source"]).iter_rows(named=True):
        print(
            f"top_{row['kind']}_answered_{row['answered']}_{row['source']}: {row['count']} slots, "
            f"{row['ratio']:.2f}x corpus share ({row['queries']} queries)"
        )
    for row in pl.read_parquet(report / "magnitude_comparison.parquet").iter_rows(named=True):
        subset = "" if row["queries"] == "all" else "_" + row["queries"].replace(" ", "_")
        print(
            f"{row['measure']}{subset}_reasoning_over_factual: {row['reasoning_over_factual']:.3f} "
            f"[{row['ci_low']:.3f}, {row['ci_high']:.3f}] ({row['factual_queries']} factual, "
            f"{row['reasoning_queries']} reasoning queries)"
        )
    for row in pl.read_parquet(report / "correlation_groups.parquet").iter_rows(named=True):
        name = row["group"].replace(",", "").replace(" ", "_")
        print(
            f"correlation_{name}: {row['mean_r']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}] ({row['pairs']} pairs)"
        )
    for row in pl.read_parquet(report / "power_law_test.parquet").iter_rows(named=True):
        subset = "" if row["queries"] == "all" else "_" + row["queries"].replace(" ", "_")
        print(
            f"power_law_{row['fit']}{subset}_slopes: factual {row['factual_mean']:.3f}, reasoning {row['reasoning_mean']:.3f}, "
            f"Welch t {row['t']:.2f}, p {row['p']:.2g} ({row['factual_queries']} and {row['reasoning_queries']} queries)"
        )
    curves = pl.read_parquet(report / "magnitude_curves.parquet").filter(
        (pl.col("by") == "percentile") & pl.col("at").is_in([10.0, 100.0]) & pl.col("kind").is_in(["factual", POOLED])
    )
    for row in curves.iter_rows(named=True):
        name = row["kind"].split(" ")[0]
        print(
            f"per_nat_{name}_{row['side']}_top{row['at']:.0f}pct: {row['mean_per_nat']:.4g} "
            f"[{row['ci_low']:.4g}, {row['ci_high']:.4g}]"
        )
    for row in pl.read_parquet(report / "answer_search_kinds.parquet").iter_rows(named=True):
        steps = (
            (
                f"; all steps in one document {row['all_steps_in_one_document']}, across documents "
                f"{row['all_steps_across_documents']} of {row['multi_step_queries']}"
            )
            if row["multi_step_queries"]
            else ""
        )
        print(
            f"answer_search_{row['kind'].split(' ')[0]}: answer in the top {row['searched']} of "
            f"{row['answer_found']}/{row['queries_with_answer']} queries, in {row['mean_docs_with_answer']:.3g} "
            f"documents per query (by chance {row['mean_expected_by_chance']:.3g}){steps}"
        )
    at_k = pl.read_parquet(report / "sources_at_k.parquet").filter(
        (pl.col("kind") == POOLED)
        & pl.col("source").is_in(["math_procedure", "math_result"])
        & pl.col("cutoff").str.ends_with("documents")  # the paper's k as counts; as fractions below
    )
    for row in at_k.iter_rows(named=True):
        print(
            f"sources_reasoning_{row['side']}{row['k']}_{row['source']}: {row['ratio']:.2f}x corpus share "
            f"({row['count']:.0f} of {row['documents']} slots, {row['corpus_fraction']:.2%} of the corpus"
            f"{'' if row['exact'] else ', estimated'})"
        )
    by_method = pl.read_parquet(report / "sources_by_method.parquet").filter(
        (pl.col("kind") == POOLED) & pl.col("source").is_in(["math_procedure", "math_result"])
    )
    for row in by_method.iter_rows(named=True):
        print(
            f"sources_reasoning_top{row['k']}_{row['source']}_{row['method']}: {row['ratio']:.2f}x corpus share "
            f"({row['count']} of {row['documents']} slots)"
        )
    for row in pl.read_parquet(report / "cutoffs.parquet").iter_rows(named=True):
        print(
            f"cutoff_{row['analysis'].split(' (')[0].replace(' ', '_')}: k = {row['k']}, {row['fraction']:.2%} of "
            f"{row['corpus']} documents{' (over 5%)' if row['too_wide'] else ''}"
        )
    for row in pl.read_parquet(report / "report_tests.parquet").iter_rows(named=True):
        print(
            f"test_{row['section']}: {row['comparison']}: p {row['p']:.3g}, Holm {row['p_holm']:.3g} "
            f"({row['test']}, n = {row['queries']})"
        )
    for row in (
        pl.read_parquet(report / "completions_kinds.parquet")
        .filter((pl.col("with_answer") > 0) & (pl.col("kind") != POOLED))
        .iter_rows(named=True)
    ):
        print(
            f"answered_correctly_{row['kind']}: {row['correct']}/{row['with_answer']} queries "
            f"({row['generated']} completions written by the model)"
        )
    for row in (
        pl.read_parquet(report / "model_comparison_kinds.parquet")
        .filter(pl.col("kind") != POOLED)
        .iter_rows(named=True)
    ):
        print(
            f"compared_{row['model']}_{row['kind']}: mean r {row['mean_pearson']:.3f} [{row['ci_low']:.3f}, "
            f"{row['ci_high']:.3f}], top-{row['k']} overlap {row['mean_top_overlap']:.2f}, multipliers top "
            f"{row['top_multiplier']:.3g} bottom {row['bottom_multiplier']:.3g}"
        )
    for row in pl.read_parquet(report / "tail_patch.parquet").filter(pl.col("kind") == "all").iter_rows(named=True):
        print(f"tailpatch_{row['method']}: {row['mean_gain']:.4g} [{row['low']:.4g}, {row['high']:.4g}]")
    for row in pl.read_parquet(report / "evidence_retrieval.parquet").iter_rows(named=True):
        by = "" if row["evidence_documents"] == 0 else f"_stated{row['evidence_documents']}x"
        print(f"{row['kind']}_mrr_{row['method']}{by}: {row['mrr']:.3f} (recall@k {row['recall_at_k']:.3f})")
    for line in detection_lines(pl.read_parquet(report / "answer_detection_summary.parquet")):
        print(line)
    for row in pl.read_parquet(report / "score_accuracy.parquet").iter_rows(named=True):
        print(
            f"score_accuracy_{row['shard']}: mean per-query Pearson {row['pearson_mean']:.3f} (lowest query "
            f"{row['pearson_min']:.3f}) on {row['documents']} sampled documents, same top document for "
            f"{row['top1_agreement']:.0%} of queries; exact {row['exact']}"
        )
    for frequency, (loss, norm, n) in sorted(planted_losses(Path(args.storage)).items()):
        print(f"planted_stated{frequency}x_loss_per_token: {loss:.3f} (median gradient norm {norm:.3g}, {n} documents)")


def planted_losses(storage: Path) -> dict[int, tuple[float, float, int]]:
    """Mean next-token loss per token and median (stored) gradient norm of the planted
    documents, by how many documents state their fact: is a repeated fact a learned one?"""
    import numpy as np
    from safetensors import safe_open

    from pretrace.demo.planted import planted_facts
    from pretrace.influence.document_gradients import DocumentGradients

    frequency = {f.key: f.frequency for f in planted_facts()}
    found: dict[int, tuple[list[float], list[float]]] = {}
    for path in sorted((storage / "document_gradients").glob("*.safetensors")):
        shard = path.name.removesuffix(".safetensors")
        with safe_open(str(path), "pt") as f:
            grads = DocumentGradients.from_tensors({k: f.get_tensor(k) for k in f.keys()}, f.metadata())
        tokens = pl.read_parquet(storage / "corpus_shards" / f"{shard}.parquet", columns=["doc_id", "n_tokens"])
        n_tokens = dict(zip(tokens["doc_id"].to_list(), tokens["n_tokens"].to_list()))
        norms = sum((grads.dense(name).flatten(1).double() ** 2).sum(1) for name in grads.grads).sqrt()
        for i, doc in enumerate(grads.ids):
            if doc.startswith("planted/"):
                losses, sizes = found.setdefault(frequency["/".join(doc.split("/")[:3])], ([], []))
                losses.append(float(grads.losses[i]) / (n_tokens[doc] - 1))
                sizes.append(float(norms[i]))
    return {k: (float(np.mean(v[0])), float(np.median(v[1])), len(v[0])) for k, v in found.items()}


if __name__ == "__main__":
    main()
