"""`pretrace ...` that SIGKILLs itself at one exact point: as it starts writing the nth artefact
file whose storage key starts with a prefix. Tests use it to die mid-commit, deterministically.

    python tests/pipeline/kill_at.py influence_scores/part-b.jsonl 2 run --config pretrace.yaml
"""

import os
import signal
import sys

from pretrace.pipeline.cli import main
from pretrace.project.manifests import ArtefactStore

prefix, nth = sys.argv[1], int(sys.argv[2])
write = ArtefactStore._write
seen = 0


def write_or_die(self, key, content):
    global seen
    if key.startswith(prefix):
        seen += 1
        if seen == nth:
            os.kill(os.getpid(), signal.SIGKILL)
    return write(self, key, content)


ArtefactStore._write = write_or_die
main(sys.argv[3:])
