"""The code base passes ruff's lint and its formatter (the style CI enforces)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TREES = ["scresidual", "tests", "benchmarks"]


def _ruff(*args: str) -> subprocess.CompletedProcess:
    # the ruff of this interpreter's environment, whether or not that environment is activated
    assert importlib.util.find_spec("ruff"), (
        "ruff is missing; install the test extra: pip install -e '.[test]'"
    )
    command = [sys.executable, "-m", "ruff", *args, *TREES]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True)


@pytest.mark.parametrize("command", [("check",), ("format", "--check")], ids=["lint", "format"])
def test_ruff_passes(command):
    run = _ruff(*command)
    assert run.returncode == 0, run.stdout + run.stderr
