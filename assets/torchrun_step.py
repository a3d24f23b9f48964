"""The processes of a step on several GPUs (`gpus_per_step` > 1), started by the step under
torchrun (`pretrace.assets.torchrun`), one per GPU:

    torchrun --nproc-per-node N -m pretrace.assets.torchrun_step --settings pretrace.json \
        --artefact ekfac_covariances [--partition SHARD] [--model NAME] [--demo]

Each rank computes its share of the partition (`pretrace.influence.distributed`) through the same
functions as a one-GPU step; rank 0 commits the artefact and prints what it wrote, the others
wait for it. A pretrace error is printed as one line that the step raises again.
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path
from types import SimpleNamespace

from pretrace.config import parse_config
from pretrace.errors import InputError, PretraceError
from pretrace.influence.distributed import Ranks, error_line, process_group, result_line
from pretrace.project.computation import Computation
from pretrace.project.provenance import Project

from .common import progress_logger
from .ekfac import SHARD_PASSES, shard_pass_state
from .gradients import document_gradients_state
from .torchrun import Progresses

STATES = {name: partial(shard_pass_state, name=name) for name in SHARD_PASSES} | {
    "document_gradients": document_gradients_state
}
"""What each artefact computed under torchrun is: a function of (run, progresses, ranks)."""
_PRINTED = SimpleNamespace(log=SimpleNamespace(log=lambda level, message: print(message, flush=True)))


def _progresses(ranks: Ranks) -> Progresses:
    """Rank 0's progress lines, its documents counted for every rank's (their shares are about
    equal), never past the total."""

    def progresses(total: int, what: str):
        if not ranks.writes:
            return lambda n: None
        advance, counted = progress_logger(_PRINTED, total, what), [0]

        def count(n: int) -> None:
            step = min(n * ranks.world, total - counted[0])
            counted[0] += step
            advance(step)

        return count

    return progresses


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", required=True, help="the step's settings as JSON")
    parser.add_argument("--artefact", required=True, choices=sorted(STATES))
    parser.add_argument("--partition")
    parser.add_argument("--model", help="the compared model (`compare_models`) the artefact belongs to")
    parser.add_argument("--demo", action="store_true")
    args = parser.parse_args(argv)
    try:
        config = parse_config(json.loads(Path(args.settings).read_text()), source=args.settings)
    except (OSError, ValueError, InputError) as exc:
        print(error_line(exc if isinstance(exc, PretraceError) else InputError(str(exc))), flush=True)
        return 1
    with process_group(config.device) as ranks:
        try:
            project = Project(config, demo=args.demo).compared(args.model)
            run = Computation(project, args.artefact, args.partition, log=print if ranks.writes else lambda _: None)
            state, description = STATES[args.artefact](run, progresses=_progresses(ranks), ranks=ranks)
            if ranks.writes:
                run.commit({"{shard}.safetensors": state})
                print(result_line(description), flush=True)
        except PretraceError as exc:
            print(error_line(exc), flush=True)
            return 1
        ranks.barrier()
    return 0


if __name__ == "__main__":
    sys.exit(main())
