"""`ruff` (ruff.toml) over the whole project and `mypy` (runtime/pyproject.toml) over the
runtime, both clean."""

from __future__ import annotations

import subprocess
import sys

from helpers import REPO


def test_ruff_finds_nothing():
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_finds_nothing_in_the_runtime():
    proc = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental"], cwd=REPO / "runtime",
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
