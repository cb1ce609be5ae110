"""Static checks of the runtime: bandit finds nothing of medium or high severity."""

from __future__ import annotations

import json
import subprocess
import sys

from helpers import REPO


def test_bandit_finds_no_medium_or_high_issues():
    proc = subprocess.run(
        [sys.executable, "-m", "bandit", "-r", str(REPO / "runtime" / "pyanamo"), "-ll", "-f", "json", "-q"],
        capture_output=True, text=True, timeout=300)
    report = json.loads(proc.stdout)
    issues = [f"{i['filename']}:{i['line_number']} {i['test_id']} {i['issue_text']}" for i in report["results"]]
    assert issues == [] and proc.returncode == 0
    assert report["metrics"]["_totals"]["loc"] > 1000  # it really scanned the package
