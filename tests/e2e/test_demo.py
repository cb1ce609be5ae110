"""The README's local demo, run as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from helpers import REPO


def test_demo_script_runs_the_bundled_workload(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    proc = subprocess.run(["bash", str(REPO / "examples" / "demo.sh")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "imported 6 items (18 sub-tasks)" in proc.stdout
    assert "sub-tasks done: 18/18 (100.0%)" in proc.stdout
    assert "18 files of 18 sub-tasks in demo-run/results" in proc.stdout
    vcf = (REPO / "demo-run" / "results" / "NA12801" / "Task_0" / "NA12801.chr20.vcf").read_text()
    assert "item=NA12801 subtask=Task_0" in vcf
    assert "run report: demo-run/report.html" in proc.stdout
    report = (REPO / "demo-run" / "report.html").read_text()
    assert report.count('<rect class="run done"') == 18
    trace = (REPO / "demo-run" / "trace.tsv").read_text().splitlines()
    assert len(trace) == 19 and trace[0].startswith("item\ttask\tsubtask\tlabel\tattempt")
