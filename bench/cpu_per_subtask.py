"""Benchmark 11: CPU per sub-task beside GNU parallel's CPU per job — a figure that does not
depend on the number of cores.

    python bench/cpu_per_subtask.py [--items 400] [--workers 2] [--repeat 2]

N items of `true` run by W `pyanamo worker` processes (`--items 1`) against `pyanamo local`
(dynalite), once with each launcher (`--launcher fork-server`, the default, and `process`: a
supervisor process of its own per sub-task), and `parallel -j W true ::: 1..N` on the same
machine in the same run. CPU time is
user + system: of each worker process with everything it waited for (its sub-tasks' supervisors
and their bash: ``wait4``), of the endpoint's process tree (``/proc``), and of GNU parallel with
its jobs. Also the DynamoDB requests per item (PYANAMO_STATS_FILE). Each run is repeated.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import PYANAMO, LocalServer, merge_stats, save, show, write_task_file


def waited_cpu(process: subprocess.Popen) -> tuple[int, float]:
    """Exit status and CPU seconds (user + system) of a child and all it waited for."""
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, usage.ru_utime + usage.ru_stime


LAUNCHERS = ("fork-server", "process")


def pyanamo_run(server: LocalServer, folder: Path, items: int, workers: int, run: str,
                launcher: str) -> dict[str, float]:
    table = server.new_table()
    path = write_task_file(folder / f"tasks-{run}.txt", [f"c{n:05d}|S|true" for n in range(items)])
    subprocess.run([*PYANAMO, "import", table, str(path)], env=server.env, check=True, capture_output=True)
    stats = [folder / f"stats-{run}-{n}.json" for n in range(workers)]
    endpoint_before, started = server.cpu_seconds(), time.monotonic()
    processes = [subprocess.Popen([*PYANAMO, "worker", table, "--launcher", launcher, "--lease", "60", "--quiet",
                                   "--log-dir",
                                   str(folder / "logs"), "--workdir", str(folder), "--outputs", str(folder / "out")],
                                  env={**server.env, "PYANAMO_STATS_FILE": str(stats[n])},
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for n in range(workers)]
    results = [waited_cpu(p) for p in processes]
    wall = time.monotonic() - started
    endpoint = server.cpu_seconds() - endpoint_before
    assert [code for code, _ in results] == [0] * workers, results
    workers_cpu = sum(cpu for _, cpu in results)
    calls = merge_stats(stats)["calls"]
    return {"workers_ms": 1000 * workers_cpu / items, "endpoint_ms": 1000 * endpoint / items,
            "total_ms": 1000 * (workers_cpu + endpoint) / items, "wall_s": wall,
            "requests_per_item": sum(calls.values()) / items}


def parallel_run(items: int, workers: int) -> dict[str, float]:
    started = time.monotonic()
    process = subprocess.Popen(["parallel", "--will-cite", "-j", str(workers), "true", ":::",
                                *map(str, range(items))], stdout=subprocess.DEVNULL)
    code, cpu = waited_cpu(process)
    assert code == 0, code
    return {"ms": 1000 * cpu / items, "wall_s": time.monotonic() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=400)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    if shutil.which("parallel") is None:
        sys.exit("needs GNU parallel (make bench-setup installs it)")
    rows = []
    with LocalServer() as server, tempfile.TemporaryDirectory() as tmp:
        for run in range(args.repeat):
            for launcher in LAUNCHERS:
                ours = pyanamo_run(server, Path(tmp), args.items, args.workers, f"{run}-{launcher}", launcher)
                theirs = parallel_run(args.items, args.workers)
                rows.append({
                    "run": run + 1, "launcher": launcher, "items": args.items, "workers": args.workers,
                    "pyanamo_workers_ms": round(ours["workers_ms"], 1),
                    "pyanamo_endpoint_ms": round(ours["endpoint_ms"], 1),
                    "pyanamo_total_ms": round(ours["total_ms"], 1),
                    "parallel_ms": round(theirs["ms"], 1),
                    "ratio": round(ours["total_ms"] / theirs["ms"], 2),
                    "pyanamo_wall_s": round(ours["wall_s"], 1), "parallel_wall_s": round(theirs["wall_s"], 1),
                    "requests_per_item": round(ours["requests_per_item"], 2)})
    show("CPU per sub-task", ["run", "launcher", "workers + supervisors (ms)", "endpoint (ms)", "PyAnamo total (ms)",
                              "GNU parallel (ms)", "ratio", "requests per item"],
         [[r["run"], r["launcher"], r["pyanamo_workers_ms"], r["pyanamo_endpoint_ms"], r["pyanamo_total_ms"],
           r["parallel_ms"], r["ratio"], r["requests_per_item"]] for r in rows])
    print(save("cpu_per_subtask", {"rows": rows}))


if __name__ == "__main__":
    main()
