"""The fleet's sub-task user cannot reach the metadata service (the instance role's keys): the
bootstrap's firewall rule (infra/deny-imds.sh), applied in a network namespace of its own where
a stand-in metadata service listens on 169.254.169.254."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from helpers import REPO

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("setpriv")
    or not (shutil.which("nft") or shutil.which("iptables")),
    reason="needs root, unshare, setpriv and nft or iptables (make test installs nftables where it can)")

IN_NAMESPACE = r"""
set -eu
ip link set lo up
ip addr add 169.254.169.254/32 dev lo
python3 -m http.server 80 --bind 169.254.169.254 > /dev/null 2>&1 &
server=$!
for _ in $(seq 100); do curl -s -o /dev/null http://169.254.169.254/ && break; sleep 0.05; done
bash "$DENY" nobody
root=$(curl -s -o /dev/null -w '%{http_code}' -m 5 http://169.254.169.254/ || true)
task=$(setpriv --reuid=nobody --regid=nogroup --clear-groups curl -s -o /dev/null -w '%{http_code}' -m 5 \
  http://169.254.169.254/ || true)
other=$(setpriv --reuid=daemon --regid=daemon --clear-groups curl -s -o /dev/null -w '%{http_code}' -m 5 \
  http://169.254.169.254/ || true)
kill $server
echo "root=$root task=$task other=$other"
"""


def test_the_task_user_cannot_reach_the_metadata_service_and_others_still_can():
    proc = subprocess.run(["unshare", "--net", "bash", "-c", IN_NAMESPACE], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "DENY": str(REPO / "infra" / "deny-imds.sh")})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["root=200", "task=000", "other=200"], proc.stdout + proc.stderr
