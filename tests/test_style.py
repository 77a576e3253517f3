"""The code base passes ruff's lint and its formatter (the style CI enforces)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TREES = ["scresidual", "tests", "benchmarks"]


def _ruff(*args: str) -> subprocess.CompletedProcess:
    ruff = shutil.which("ruff")
    assert ruff, "ruff is missing; install the test extra: pip install -e '.[test]'"
    return subprocess.run([ruff, *args, *TREES], cwd=ROOT, capture_output=True, text=True)


@pytest.mark.parametrize("command", [("check",), ("format", "--check")], ids=["lint", "format"])
def test_ruff_passes(command):
    run = _ruff(*command)
    assert run.returncode == 0, run.stdout + run.stderr
