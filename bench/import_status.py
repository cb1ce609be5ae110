"""Benchmarks 4 and 5: importing 100,000 items (and 10,000 x 10 sub-tasks); `status` on them.

    python bench/import_status.py [--items 100000] [--bundled 10000] [--subtasks 10]

Import: wall time, items/s, DynamoDB requests, peak memory of the `pyanamo import` process.
Status: wall time and items read by `pyanamo status --json` on the 100,000-item table; the
request counts show it never scans.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import PYANAMO, LocalServer, save, show, timed, write_task_file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--bundled", type=int, default=10_000)
    parser.add_argument("--subtasks", type=int, default=10)
    args = parser.parse_args()
    rows, status_rows = [], []
    with LocalServer() as server, tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        cases = [
            ("single", args.items, [f"s{n:07d}|S{n % 1000:03d}|bash call.sh s{n:07d}" for n in range(args.items)]),
            (f"{args.subtasks} sub-tasks", args.bundled,
             [f"b{n:06d}|B|bash call.sh b{n:06d} chr{k}" for n in range(args.bundled) for k in range(args.subtasks)]),
        ]
        for name, items, lines in cases:
            table = server.new_table()
            path = write_task_file(folder / "tasks.txt", lines)
            with server.cpu_share() as share:
                run = timed([*PYANAMO, "import", table, str(path)], server.env, folder / "import.json")
            assert run.returncode == 0
            calls = run.stats["calls"]
            rows.append({"case": name, "items": items, "subtasks": len(lines), "seconds": round(run.seconds, 2),
                         "items_per_second": round(items / run.seconds), "requests": sum(calls.values()),
                         "calls": calls, "peak_rss_mb": round(run.max_rss_mb, 1),
                         "endpoint_cpu_percent": share["percent"]})
            if name == "single":
                with server.cpu_share() as share:
                    status = timed([*PYANAMO, "status", table, "--json"], server.env, folder / "status.json")
                assert status.returncode == 0
                status_rows.append({"items": items, "seconds": round(status.seconds, 2),
                                    "items_read": status.stats["items_read"], "calls": status.stats["calls"],
                                    "scans": status.stats["calls"].get("Scan", 0),
                                    "peak_rss_mb": round(status.max_rss_mb, 1),
                                    "endpoint_cpu_percent": share["percent"]})
    show("pyanamo import", ["case", "items", "sub-tasks", "seconds", "items/s", "requests", "peak RSS MB",
                            "endpoint CPU %"],
         [[r["case"], r["items"], r["subtasks"], r["seconds"], r["items_per_second"], r["requests"],
           r["peak_rss_mb"], r["endpoint_cpu_percent"]] for r in rows])
    show("pyanamo status", ["items", "seconds", "items read", "Query calls", "Scan calls", "peak RSS MB",
                            "endpoint CPU %"],
         [[r["items"], r["seconds"], r["items_read"], r["calls"].get("Query", 0), r["scans"], r["peak_rss_mb"],
           r["endpoint_cpu_percent"]] for r in status_rows])
    print(f"results: {save('import_status', {'import': rows, 'status': status_rows})}")


if __name__ == "__main__":
    main()
