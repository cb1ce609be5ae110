"""Benchmark 6: memory and CPU of a worker, idle (polling) and running 16 sub-tasks.

    python bench/footprint.py [--seconds 10]

Idle: a worker waiting behind another worker's live item (it polls with exponential backoff);
its RSS and the CPU it burns while waiting show there is no busy loop. Busy: one item of 16
`sleep` sub-tasks with --nests 16; RSS of the worker process itself (not its sub-tasks).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

from common import PYANAMO, LocalServer, save, show, write_task_file

TICKS = os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def measure(process: subprocess.Popen, seconds: float) -> tuple[float, float, int]:
    """A running worker's CPU share (% of one core) over ``seconds``, its RSS and thread count;
    then stop it."""
    time.sleep(3)  # past start-up
    before = cpu_seconds(process.pid)
    time.sleep(seconds)
    cpu = 100 * (cpu_seconds(process.pid) - before) / seconds
    rss = rss_mb(process.pid)
    threads = len(list(Path(f"/proc/{process.pid}/task").iterdir()))
    process.terminate()
    process.wait()
    return cpu, rss, threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    with LocalServer() as server, tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        common = ["--log-dir", str(folder / "logs"), "--workdir", str(folder), "--quiet"]
        # Idle: another "worker" holds the only item with a long lease.
        table = server.new_table()
        subprocess.run([*PYANAMO, "import", table, str(write_task_file(folder / "a.txt", ["held|S|true"]))],
                       env=server.env, check=True, capture_output=True)
        os.environ.update({k: v for k, v in server.env.items() if k.startswith("AWS_")})
        from pyanamo.aws import Endpoint, dynamodb_client
        from pyanamo.queue import TaskQueue

        TaskQueue(dynamodb_client(Endpoint()), table, owner="other", lease_seconds=600).claim()
        idle = subprocess.Popen([*PYANAMO, "worker", table, "--lease", "60", "--linger", "600", *common],
                                env=server.env)
        idle_cpu, idle_rss, idle_threads = measure(idle, args.seconds)
        # Busy: 16 sub-tasks at once.
        table = server.new_table()
        rows = [f"wide|S|sleep {args.seconds + 5} # {k}" for k in range(16)]
        subprocess.run([*PYANAMO, "import", table, str(write_task_file(folder / "b.txt", rows))],
                       env=server.env, check=True, capture_output=True)
        busy = subprocess.Popen([*PYANAMO, "worker", table, "--lease", "60", "--nests", "16", *common],
                                env=server.env)
        busy_cpu, busy_rss, busy_threads = measure(busy, args.seconds)
    rows = [
        {"case": "idle, polling behind a live item", "rss_mb": round(idle_rss, 1),
         "cpu_percent": round(idle_cpu, 2), "threads": idle_threads},
        {"case": "running 16 sub-tasks (--nests 16)", "rss_mb": round(busy_rss, 1),
         "cpu_percent": round(busy_cpu, 2), "threads": busy_threads},
    ]
    show("Worker footprint", ["case", "RSS MB", "CPU % of one core", "threads"],
         [[r["case"], r["rss_mb"], r["cpu_percent"], r["threads"]] for r in rows])
    print(f"results: {save('footprint', {'seconds': args.seconds, 'rows': rows})}")


if __name__ == "__main__":
    main()
