"""The GPU rates a study's time estimate rests on, read from `bench/gpu.py`'s result files.

`bench/gpu.py` measures, on one card, a bf16 training step's tokens per second on TinyLlama-1.1B's
shape and each pretrace pass as a ratio to it (same documents, same run). A time estimate needs
the training step's rate of the model under study, which was not measured. It is derived:

    a training step costs 6 x parameters FLOPs a token (forward 2P, backward 4P: gradients of
    the activations and of the weights), so at the FLOP rate the measured card achieved,
    train_tokens_per_s(P) = measured_tokens_per_s x measured_parameters / P.

This ignores attention's sequence-length term (under a tenth of a 7B step's FLOPs at 2048 tokens)
and assumes a larger model keeps the card at least as busy as the 1.1B one did. The passes'
ratios are taken as they were measured: a ratio to a training step on the same card, so
it carries over to the model's derived rate.

Result files are ``gpu-*.json`` with the date in the name (``gpu-2026-11-27-h200.json``). Each
rate comes from the newest file that holds it (by that date; at one date the larger model, then
the name); the training step's rate from a file of the target's card when one holds it. TF32
runs (``"tf32": true``) and ``--quick`` smoke runs (a model under 1e8 parameters, launch-bound)
are not used: pretrace's default passes are float32 and a small model's rates say nothing of a
large one's.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from pretrace.errors import InputError

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"
"""The repository's bench results, where `bench/gpu.py` writes (absent in an installed package)."""

SMALLEST_MEASURED_MODEL = 100_000_000
SCALE_RUN_PARAMETERS = 1_100_048_384
SCALE_RUN_LAYERS = 22 * [(5632, 2048), (5632, 2048), (2048, 5632)]
"""The MLP layers (d_out, d_in) of `bench/gpu.py`'s scale run (TinyLlama-1.1B's shape), which its
eigendecomposition and query-gradient seconds were measured on."""

_DATE = re.compile(r"(\d{4}-\d{2}-\d{2})")


@dataclass(frozen=True)
class Rate:
    """One measured figure and where it came from."""

    value: float
    source: str  # the result file's name
    card: str  # the device it names

    def cited(self) -> str:
        return f"{self.source} ({self.card})"


@dataclass(frozen=True)
class MeasuredRates:
    """The figures a study estimate needs (`pretrace.planning.study_cost`)."""

    train_tokens_per_s: Rate  # bf16 training step on the scale run's model
    parameters: int  # of the model the training step was timed on
    score_vs_train: Rate  # scoring tokens/s over training tokens/s, query gradients on the device
    fit_vs_train: Rate  # both fitting passes (covariances, eigenvalue corrections) per token, in training steps
    eigendecomposition_seconds: Rate  # every scale-run layer's two covariances
    query_gradients_seconds: Rate  # the scale run's queries (`SCALE_RUN_QUERIES`)

    def train_tokens_per_s_at(self, parameters: int) -> float:
        """A training step's tokens per second for a model of ``parameters``, by FLOPs (module docstring)."""
        return self.train_tokens_per_s.value * self.parameters / parameters

    def cited(self) -> list[str]:
        """One line per rate: its value and the file and card it came from."""
        rows = [
            (
                "training step",
                f"{self.train_tokens_per_s.value:,.0f} tokens/s at {self.parameters / 1e9:.2f}B parameters",
                self.train_tokens_per_s,
            ),
            (
                "document gradients",
                f"{self.score_vs_train.value:.3g} of a training step's tokens/s",
                self.score_vs_train,
            ),
            ("fitting passes", f"{self.fit_vs_train.value:.3g} training steps a token", self.fit_vs_train),
            (
                "eigendecomposition",
                f"{self.eigendecomposition_seconds.value:.3g} s for the 1.1B's MLPs",
                self.eigendecomposition_seconds,
            ),
            (
                "query gradients",
                f"{self.query_gradients_seconds.value:.3g} s for {SCALE_RUN_QUERIES} queries at 1.1B",
                self.query_gradients_seconds,
            ),
        ]
        return [f"{name}: {value} ({rate.cited()})" for name, value, rate in rows]


SCALE_RUN_QUERIES = 8
"""Queries of `bench/gpu.py`'s scale run, whose `query_gradients_seconds` they took."""

_SCORE_KEYS = ("score_resident_vs_train_step_tokens_per_s", "score_vs_train_step_tokens_per_s")


def _usable(results: dict) -> bool:
    return not results.get("tf32") and results.get("parameters", 0) >= SMALLEST_MEASURED_MODEL


def result_files(folder: Path = RESULTS) -> list[tuple[str, Path, dict]]:
    """(date, path, figures) of every usable GPU result file, newest first."""
    found = []
    for path in folder.glob("gpu-*.json"):
        date = _DATE.search(path.name)
        if date is None:
            continue
        results = json.loads(path.read_text())
        if _usable(results):
            found.append((date.group(1), path, results))
    return sorted(found, key=lambda f: (f[0], f[2]["parameters"], f[1].name), reverse=True)


def _newest(files: list[tuple[str, Path, dict]], keys: tuple[str, ...], card: str | None = None) -> Rate | None:
    """The first of ``keys`` in the newest file holding any (of ``card`` when given)."""
    for key in keys:
        for _, path, results in files:
            if key in results and (card is None or card.lower() in results.get("device", "").lower()):
                return Rate(float(results[key]), path.name, results.get("device", "unknown device"))
    return None


def measured_rates(card: str | None = None, folder: Path = RESULTS) -> MeasuredRates:
    """The newest measured rates; the training step's from a file of ``card`` (e.g. "H100") when one has it.
    `InputError` when no result file holds them."""
    files = result_files(folder)

    def rate(*keys: str, on: str | None = None, among: list = files) -> Rate:
        found = (_newest(among, keys, on) if on else None) or _newest(among, keys)
        if found is None:
            raise InputError(
                f"no GPU result file in {folder} holds {keys[0]}; run `python -m bench.gpu --out "
                f"{folder}/gpu-<date>-<card>.json` on a GPU, or pass --rates with a folder holding one"
            )
        return found

    train = rate("train_step_tokens_per_s", on=card)
    measured_on = next(r for _, p, r in files if p.name == train.source)
    scale_run = [f for f in files if f[2]["parameters"] == SCALE_RUN_PARAMETERS]  # the shape its seconds scale from
    return MeasuredRates(
        train_tokens_per_s=train,
        parameters=int(measured_on["parameters"]),
        score_vs_train=rate(*_SCORE_KEYS),
        fit_vs_train=rate("factor_passes_vs_train_step"),
        eigendecomposition_seconds=rate("eigendecomposition_seconds", among=scale_run),
        query_gradients_seconds=rate("query_gradients_seconds", among=scale_run),
    )
