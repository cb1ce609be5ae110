"""The README's local demo and the embedded endpoint, run as a user runs them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from helpers import REPO, cli


def test_local_endpoint_serves_the_cli(tmp_path: Path):
    server = subprocess.Popen([sys.executable, "-m", "pyanamo", "local", "--port", "0"],
                              stdout=subprocess.PIPE, text=True)
    try:
        export = server.stdout.readline().strip()
        assert export.startswith("export AWS_ENDPOINT_URL_DYNAMODB=http://127.0.0.1:")
        url = export.split("=", 1)[1]
        env = {"AWS_ENDPOINT_URL_DYNAMODB": url}  # no credentials, no region: local defaults
        assert cli("create-table", "t", env=env).returncode == 0
        status = cli("status", "t", "--json", env=env)
        assert status.returncode == 0 and '"total_items": 0' in status.stdout
    finally:
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=10) == 0


def test_demo_script_runs_the_bundled_workload(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    proc = subprocess.run(["bash", str(REPO / "examples" / "demo.sh")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "imported 6 items (18 sub-tasks)" in proc.stdout
    assert "sub-tasks done: 18/18 (100.0%)" in proc.stdout
    assert "outputs: 18 files in demo-run/output" in proc.stdout
