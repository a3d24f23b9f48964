"""`pretrace --help` and argument errors answer without importing the heavy libraries: the
parser lives alone in pretrace.pipeline.cli and a command's work is imported once it parses."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ["torch", "dagster", "transformers", "polars", "pyarrow", "pydantic"]
PROBE = """
import json, sys
from pretrace.pipeline.cli import main
try:
    main(sys.argv[1:])
    code = None
except SystemExit as exit:
    code = exit.code
print(json.dumps({"exit": code, "loaded": [m for m in HEAVY if m in sys.modules]}))
""".replace("HEAVY", repr(HEAVY))


@pytest.mark.parametrize("argv", [["--help"], ["run"], ["frobnicate"], ["plan", "--help"]])
def test_help_and_argument_errors_import_no_heavy_library(argv):
    out = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True)
    result = json.loads(out.stdout.splitlines()[-1])
    assert result == {"exit": 0 if "--help" in argv else 2, "loaded": []}, out.stderr
    if "--help" not in argv:
        assert "error:" in out.stderr


def test_the_probe_sees_a_heavy_import():
    """The check can fail: a command that runs does import its libraries."""
    code = PROBE.replace(
        "from pretrace.pipeline.cli import main", "import torch\nfrom pretrace.pipeline.cli import main"
    )
    out = subprocess.run([sys.executable, "-c", code, "--help"], capture_output=True, text=True)
    assert json.loads(out.stdout.splitlines()[-1])["loaded"] == ["torch"]
