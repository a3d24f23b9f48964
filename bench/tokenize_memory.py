"""Peak memory of tokenizing one huge document, as a ratio to a 1 MB document (issue: a 10 MB
document took 2.2 GB when tokenized whole).

Each measurement runs in a fresh process and reports its own VmHWM (`bench/memory.py`) and the
peak above what it held before tokenizing (imports, tokenizer, the text itself). The baseline,
measured in the same run, is the old way: the whole 10 MB document through the tokenizer at
once with character offsets.

    python -m bench.tokenize_memory            # 1 MB and 10 MB, ~1 minute on 2 cores
    python -m bench.tokenize_memory --mb 1 4   # other sizes (the first is the reference)
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

from bench.memory import hwm_bytes

ROOT = Path(__file__).resolve().parents[1]


def _document(megabytes: float) -> str:
    """A deterministic text of about ``megabytes`` MB: sentences of the test vocabulary."""
    from pretrace.testing.tiny import SENTENCES

    rng = random.Random(0)
    parts, size = [], 0
    while size < megabytes * 1e6:
        parts.append(rng.choice(SENTENCES))
        size += len(parts[-1]) + 1
    return " ".join(parts)


def measure(megabytes: float, whole: bool) -> dict:
    """In this (fresh) process: tokenize one document, return peak memory figures."""
    from pretrace.inputs.corpus import tokenize_documents
    from pretrace.testing.tiny import tiny_tokenizer

    tokenizer = tiny_tokenizer(vocab_size=1000)
    text = _document(megabytes)
    before = hwm_bytes()
    started = time.perf_counter()
    if whole:
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        tokens = len(encoded["input_ids"])
    else:
        table = tokenize_documents([{"id": "huge", "text": text, "source": "bench"}], tokenizer, max_length=512)
        tokens = sum(table.column("n_tokens").to_pylist())
    return {
        "mb": megabytes,
        "whole": whole,
        "tokens": tokens,
        "seconds": time.perf_counter() - started,
        "peak": hwm_bytes(),
        "before": before,
    }


def _child(megabytes: float, whole: bool) -> dict:
    command = [sys.executable, "-m", __spec__.name, "--child", str(megabytes)] + (["--whole"] if whole else [])
    out = subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--mb", type=float, nargs="+", default=[1.0, 10.0], help="document sizes; the first is the reference"
    )
    parser.add_argument("--child", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--whole", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(measure(args.child, args.whole)))
        return
    runs = [_child(mb, whole=False) for mb in args.mb] + [_child(args.mb[-1], whole=True)]
    reference = runs[0]

    def mib(b):
        return b / 2**20

    print(
        f"# tokenize_memory {time.strftime('%Y-%m-%d')} on {platform.node()} ({platform.processor() or platform.machine()})"
    )
    print(
        f"{'document':>18} {'tokens':>10} {'peak MiB':>9} {'above MiB':>10} {'peak / 1st':>11} {'above / 1st':>12} {'s':>6}"
    )
    for run in runs:
        above = run["peak"] - run["before"]
        label = f"{run['mb']:g} MB" + (" whole (old)" if run["whole"] else " segmented")
        print(
            f"{label:>18} {run['tokens']:>10} {mib(run['peak']):>9.0f} {mib(above):>10.0f} "
            f"{run['peak'] / reference['peak']:>11.2f} {above / max(reference['peak'] - reference['before'], 1):>12.2f} "
            f"{run['seconds']:>6.1f}"
        )
    print(json.dumps({"runs": runs}))


if __name__ == "__main__":
    main()
