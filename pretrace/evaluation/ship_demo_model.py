"""Train the demo model with the demo's defaults, watch its own answers while it trains, and ship
it (`pretrace.demo.shipped_model`): ``python -m pretrace.evaluation.ship_demo_model``.

The shipped model must answer most of the demo's queries itself (Ruis et al. explain a model's
own completions); its correctness per kind, greedy and by the pipeline's own rules
(`pretrace.analyses.completions`), is printed every ``--every`` steps and recorded beside it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import pyarrow as pa
import torch

from pretrace.analyses.completions import GenerationSettings, answered, greedy_completions
from pretrace.config import PretraceConfig
from pretrace.demo.corpus import build_demo_corpus
from pretrace.demo.queries import build_demo_queries
from pretrace.demo.shipped_model import SHIPPED, ship, training_inputs
from pretrace.demo.train import train_demo_model
from pretrace.inputs.query_file import read_queries
from pretrace.model.adapter import LoadedModel


def answer_rates(model: torch.nn.Module, tokenizer, queries: pa.Table, max_new_tokens: int) -> dict[str, str]:
    """'correct/n' of the model's greedy answers per query kind."""
    lm = LoadedModel(model, tokenizer, [], torch.device("cpu"))
    rows = queries.to_pylist()
    ids = greedy_completions(
        lm,
        [r["prompt"] for r in rows],
        GenerationSettings(max_new_tokens=max_new_tokens),
        names=[r["id"] for r in rows],
        stops=[r["stop"] for r in rows],
    )
    tally: dict[str, list[bool]] = {}
    for row, out in zip(rows, ids):
        tally.setdefault(row["kind"], []).append(
            bool(answered(tokenizer.decode(out, skip_special_tokens=True), row["answer"]))
        )
    return {kind: f"{sum(v)}/{len(v)}" for kind, v in tally.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = PretraceConfig()
    parser.add_argument("--every", type=int, default=1000, help="steps between answer checks (default 1000)")
    parser.add_argument(
        "--steps",
        type=int,
        default=defaults.demo_steps,
        help=f"training steps (default {defaults.demo_steps}, `demo_steps`)",
    )
    parser.add_argument("--out", type=Path, default=SHIPPED, help=f"where to ship it (default {SHIPPED})")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pretrace-ship-") as tmp:
        files = build_demo_corpus(Path(tmp) / "corpus")
        queries = read_queries(str(build_demo_queries(Path(tmp) / "queries.jsonl")))
        inputs = training_inputs(files, steps=args.steps, seed=defaults.seed, max_length=256)

        def watch(step: int, model, tokenizer) -> None:
            if step % args.every == 0 or step == args.steps:
                model.eval()
                print(f"step {step}: {answer_rates(model, tokenizer, queries, defaults.completion_tokens)}", flush=True)
                model.train()

        def progress(step: int, total: int) -> None:
            if step % 100 == 0:
                print(f"step {step}/{total}", flush=True)

        train_demo_model(
            files,
            Path(tmp) / "checkpoint",
            steps=args.steps,
            seed=defaults.seed,
            progress=progress,
            watch=watch,
        )
        from transformers import AutoTokenizer, LlamaForCausalLM

        checkpoint = Path(tmp) / "checkpoint"
        answers = answer_rates(
            LlamaForCausalLM.from_pretrained(checkpoint).eval(),
            AutoTokenizer.from_pretrained(checkpoint),
            queries,
            defaults.completion_tokens,
        )
        ship(checkpoint, inputs, answers, args.out)
    print(json.dumps({"shipped": str(args.out), "inputs": inputs, "answers_correct": answers}, indent=1))


if __name__ == "__main__":
    main()
