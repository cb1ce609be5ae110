"""Benchmark 2: DynamoDB requests and capacity units per completed item, and claim conflicts.

    python bench/cost.py [--items 500] [--bundled 100] [--conflict-items 640] [--workers 64]

Counts every DynamoDB call of the workers by operation (a botocore event hook, via
PYANAMO_STATS_FILE) with ReturnConsumedCapacity; tasks are `true`, so only the queue is measured.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

from common import PYANAMO, LocalServer, merge_stats, save, show, write_task_file


def run_case(server: LocalServer, folder: Path, name: str, rows: list[str], items: int, workers: int) -> dict:
    table = server.new_table()
    path = write_task_file(folder / f"{name}.txt", rows)
    subprocess.run([*PYANAMO, "import", table, str(path)], env=server.env, check=True, capture_output=True)
    stats_files = [folder / f"{name}-w{n}.json" for n in range(workers)]
    started = time.monotonic()
    processes = [
        subprocess.Popen([*PYANAMO, "worker", table, "--lease", "60", "--quiet", "--log-dir", str(folder / "logs"),
                          "--workdir", str(folder)],
                         env={**server.env, "PYANAMO_STATS_FILE": str(f)},
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for f in stats_files
    ]
    codes = [p.wait() for p in processes]
    seconds = time.monotonic() - started
    assert codes == [0] * workers, codes
    stats = merge_stats(stats_files)
    calls = dict(stats["calls"])
    probes = calls.pop("Query (COUNT probe)", 0)  # counted inside Query too
    conflicts = stats["errors"].get("UpdateItem:ConditionalCheckFailedException", 0)
    return {
        "case": name, "items": items, "workers": workers, "seconds": round(seconds, 2),
        "calls_per_item": {op: round(n / items, 3) for op, n in sorted(calls.items())},
        "requests_per_item": round(sum(calls.values()) / items, 3),
        "drain_probes_per_item": round(probes / items, 3),
        "requests_per_item_without_drain_probes": round((sum(calls.values()) - probes) / items, 3),
        "conflicts_per_item": round(conflicts / items, 3),
        "read_units_per_item": round(stats["read_units"] / items, 3),
        "write_units_per_item": round(stats["write_units"] / items, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=500)
    parser.add_argument("--bundled", type=int, default=100)
    parser.add_argument("--subtasks", type=int, default=10)
    parser.add_argument("--conflict-items", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=64)
    args = parser.parse_args()
    with LocalServer() as server, tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        cases = [
            run_case(server, folder, "single", [f"i{n:06d}|S|true" for n in range(args.items)], args.items, 1),
            run_case(server, folder, f"{args.subtasks} sub-tasks",
                     [f"b{n:05d}|S|true {k}" for n in range(args.bundled) for k in range(args.subtasks)],
                     args.bundled, 1),
            run_case(server, folder, f"single, {args.workers} workers",
                     [f"c{n:06d}|S|true" for n in range(args.conflict_items)], args.conflict_items, args.workers),
        ]
    show("DynamoDB requests per completed item",
         ["case", "items", "workers", "requests/item", "of which drain probes", "Query", "UpdateItem", "GetItem",
          "conflicts/item", "RCU/item", "WCU/item"],
         [[c["case"], c["items"], c["workers"], c["requests_per_item"], c["drain_probes_per_item"],
           c["calls_per_item"].get("Query", 0),
           c["calls_per_item"].get("UpdateItem", 0), c["calls_per_item"].get("GetItem", 0),
           c["conflicts_per_item"], c["read_units_per_item"], c["write_units_per_item"]] for c in cases])
    print(f"results: {save('cost', {'cases': cases})}")


if __name__ == "__main__":
    main()
