"""Benchmark 1: dispatch overhead, PyAnamo next to GNU parallel on the same commands.

    python bench/dispatch.py [--items 2000] [--workers 1,4,16,64] [--sleep S] [--name NAME]

N single items of `sleep S` (S = 0.5 s for W <= 16, 2 s for W = 64, or --sleep), run by W local
`pyanamo worker` processes against `pyanamo local` (dynalite; PYANAMO_BENCH_ENGINE=moto for
moto), and the same N commands run by `parallel -j W` (GNU parallel, the local floor). Reports
wall times, their ratio, items/s, the per-item overhead (W x wall - N x S) / N, and the
endpoint's CPU share during the run (near 100 %: the endpoint, not PyAnamo, set the pace).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import PYANAMO, LocalServer, save, show, write_task_file


def sleep_for(workers: int) -> float:
    return 0.5 if workers <= 16 else 2.0


def run_pyanamo(server: LocalServer, folder: Path, items: int, processes: int, slots: int,
                seconds: float) -> tuple[float, float]:
    """Wall seconds of the run, and the endpoint's CPU share meanwhile (% of one core)."""
    table = server.new_table()
    path = write_task_file(folder / "tasks.txt", [f"d{n:05d}|S|sleep {seconds}" for n in range(items)])
    subprocess.run([*PYANAMO, "import", table, str(path)], env=server.env, check=True, capture_output=True)
    started = time.monotonic()
    with server.cpu_share() as share:
        workers = [
            subprocess.Popen([*PYANAMO, "worker", table, "--lease", "60", "--quiet", "--items", str(slots),
                              "--log-dir", str(folder / "logs"), "--workdir", str(folder)],
                             env=server.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for _ in range(processes)
        ]
        codes = [p.wait() for p in workers]
    assert codes == [0] * len(workers), codes
    return time.monotonic() - started, share["percent"]


def run_parallel(folder: Path, items: int, workers: int, seconds: float) -> float:
    commands = folder / "commands.txt"
    commands.write_text("".join(f"sleep {seconds}\n" for _ in range(items)))
    started = time.monotonic()
    subprocess.run(["parallel", "-j", str(workers), "--will-cite"], stdin=commands.open(), check=True,
                   stdout=subprocess.DEVNULL)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--name", default="dispatch", help="results file name (bench/results/NAME.json)")
    parser.add_argument("--workers", default="1,4,16,64,16x4",
                        help="worker processes, or PROCESSESxSLOTS (e.g. 16x4: 16 processes with --items 4)")
    parser.add_argument("--sleep", type=float, default=None,
                        help="seconds each item sleeps (default: 0.5 for W <= 16, 2 above)")
    args = parser.parse_args()
    if shutil.which("parallel") is None:
        sys.exit("GNU parallel is missing: run `make bench-setup` (apt-get install parallel)")
    rows = []
    with LocalServer() as server, tempfile.TemporaryDirectory() as tmp:
        for spec in args.workers.split(","):
            processes, _, slots = spec.partition("x")
            processes, slots = int(processes), int(slots or 1)
            workers = processes * slots
            seconds = args.sleep or sleep_for(workers)
            ours, endpoint_cpu = run_pyanamo(server, Path(tmp), args.items, processes, slots, seconds)
            floor = run_parallel(Path(tmp), args.items, workers, seconds)
            rows.append({
                "workers": workers, "processes": processes, "slots": slots, "items": args.items,
                "sleep": seconds, "pyanamo_seconds": round(ours, 1), "parallel_seconds": round(floor, 1),
                "ideal_seconds": args.items * seconds / workers, "ratio": round(ours / floor, 3),
                "items_per_second": round(args.items / ours, 2),
                "overhead_per_item_ms": round(1000 * (workers * ours - args.items * seconds) / args.items, 1),
                "endpoint_cpu_percent": endpoint_cpu,
            })
            print(rows[-1], flush=True)
    show("Dispatch: PyAnamo next to GNU parallel",
         ["W", "processes x slots", "items", "sleep s", "PyAnamo s", "parallel s", "ratio", "items/s",
          "overhead ms/item", "endpoint CPU %"],
         [[r["workers"], f"{r['processes']} x {r['slots']}", r["items"], r["sleep"], r["pyanamo_seconds"],
           r["parallel_seconds"], r["ratio"], r["items_per_second"], r["overhead_per_item_ms"],
           r["endpoint_cpu_percent"]] for r in rows])
    print(f"results: {save(args.name, {'rows': rows})}")


if __name__ == "__main__":
    main()
