"""Benchmark 8: where a worker's time per item goes.

    python bench/profile_item.py [--items 300]

One worker (`--items 1`) runs N items of `true` against `pyanamo local`; its JSON events and
request statistics give, per item: the claim (from the previous item's end to this claim:
queries, the conditional update), the start (claim to sub-task start), the sub-task as the
worker sees it (supervisor start, bash, wait, result), and the write-back (result to item done).
Beside them: the DynamoDB requests per item and their client-side latency, the cost of starting
the supervisor (`python -I -S`) and `bash -c true` alone, and the worker's CPU time per item.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from common import HOOKS, PYANAMO, LocalServer, save, show, write_task_file


def epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def spawn_ms(args: list[str], runs: int = 30) -> float:
    started = time.perf_counter()
    for _ in range(runs):
        subprocess.run(args, check=True)
    return round(1000 * (time.perf_counter() - started) / runs, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=300)
    args = parser.parse_args()
    with LocalServer() as server, tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        table = server.new_table()
        path = write_task_file(folder / "tasks.txt", [f"p{n:05d}|S|true" for n in range(args.items)])
        subprocess.run([*PYANAMO, "import", table, str(path)], env=server.env, check=True, capture_output=True)
        env = {**server.env, **HOOKS, "PYANAMO_STATS_FILE": str(folder / "stats.json")}
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.monotonic()
        with server.cpu_share() as share:
            worker = subprocess.run([*PYANAMO, "worker", table, "--lease", "60", "--log-dir", str(folder / "logs"),
                                     "--workdir", str(folder)], env=env, capture_output=True, text=True)
        wall = time.monotonic() - started
        assert worker.returncode == 0, worker.stderr[-2000:]
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        events = [json.loads(line) for line in worker.stderr.splitlines() if line.startswith("{")]
        stats = json.loads((folder / "stats.json").read_text())
    phases: dict[str, list[float]] = {"claim": [], "start": [], "sub-task": [], "write-back": []}
    last_end = None
    current: dict[str, float] = {}
    for event in events:
        t = epoch(event["ts"])
        name = event["event"]
        if name == "item_claimed":
            if last_end is not None:
                phases["claim"].append(t - last_end)
            current = {"claimed": t}
        elif name == "subtask_started" and current:
            current["started"] = t
        elif name == "subtask_finished" and "started" in current:
            current["finished"] = t
        elif name in ("item_done", "item_failed") and "finished" in current:
            phases["start"].append(current["started"] - current["claimed"])
            phases["sub-task"].append(current["finished"] - current["started"])
            phases["write-back"].append(t - current["finished"])
            last_end = t
    n = args.items
    calls = stats["calls"]
    requests = {name: {"per_item": round(count / n, 2),
                       "ms_each": round(1000 * stats.get("seconds", {}).get(name, 0) / max(count, 1), 2)}
                for name, count in sorted(calls.items())}
    row = {
        "items": n, "wall_seconds": round(wall, 1), "ms_per_item": round(1000 * wall / n, 1),
        "phases_ms_median": {k: round(1000 * statistics.median(v), 1) for k, v in phases.items() if v},
        "requests": requests,
        "worker_cpu_ms_per_item": round(1000 * cpu / n, 1),  # the worker, its supervisors and bash
        "supervisor_start_ms": spawn_ms([sys.executable, "-I", "-S", "-c", "pass"]),
        "bash_start_ms": spawn_ms(["bash", "-c", "true"]),
        "endpoint_cpu_percent": share["percent"],
    }
    print(json.dumps(row, indent=2))
    show("Per item, one worker, `true` items", ["phase", "median ms"],
         [[k, v] for k, v in row["phases_ms_median"].items()] + [["total (wall / items)", row["ms_per_item"]]])
    show("DynamoDB requests", ["operation", "per item", "ms each (client side)"],
         [[k, v["per_item"], v["ms_each"]] for k, v in requests.items()])
    print(f"results: {save('profile_item', {'rows': [row]})}")


if __name__ == "__main__":
    main()
