"""Benchmark 3: the cost of a claim as the backlog grows (it must stay flat: O(1) per claim).

    python bench/backlog.py [--backlogs 1000,10000,100000] [--claims 200]

For each backlog size, imports that many todo items, then claims and finishes ``--claims`` of
them in-process, counting DynamoDB requests and items read (Query ScannedCount) per claim, and
timing each claim (median and p95) with the endpoint's CPU share.
Writes bench/results/backlog.json and a plot, bench/results/backlog.png.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

from common import PYANAMO, RESULTS, LocalServer, save, show, write_task_file


def measure(server: LocalServer, folder: Path, backlog: int, claims: int) -> dict:
    from pyanamo.aws import Endpoint, dynamodb_client
    from pyanamo.gateway import SubtaskResult
    from pyanamo.queue import TaskQueue
    from pyanamo.schema import ItemState, SubtaskStatus
    from pyanamo.stats import RequestStats

    table = server.new_table()
    path = write_task_file(folder / f"{backlog}.txt", [f"i{n:07d}|S|true" for n in range(backlog)])
    subprocess.run([*PYANAMO, "import", table, str(path)], env=server.env, check=True, capture_output=True)
    os.environ.update({k: v for k, v in server.env.items() if k.startswith("AWS_")})
    client = dynamodb_client(Endpoint())
    stats = RequestStats()
    stats.install(client)
    queue = TaskQueue(client, table, owner="bench", lease_seconds=60)
    done = SubtaskResult("Task_0", SubtaskStatus.DONE, 1, 0, {"stdout": "", "stderr": ""}, {"ExitCode": 0})
    latencies = []
    started = time.monotonic()
    with server.cpu_share() as share:
        for _ in range(claims):
            before = time.perf_counter()
            claimed = queue.claim()
            latencies.append(time.perf_counter() - before)
            assert claimed is not None
            queue.record(claimed[1], done, final=ItemState.DONE)
    seconds = time.monotonic() - started
    latencies.sort()
    snapshot = stats.snapshot()
    calls = snapshot["calls"]
    return {
        "backlog": backlog, "claims": claims,
        "queries_per_claim": round(calls.get("Query", 0) / claims, 3),
        "requests_per_claim": round(sum(calls.values()) / claims, 3),
        "items_read_per_claim": round(snapshot["items_read"] / claims, 3),
        "scans": calls.get("Scan", 0),
        "ms_per_claim_and_finish": round(1000 * seconds / claims, 2),
        "claim_ms_median": round(1000 * latencies[len(latencies) // 2], 2),
        "claim_ms_p95": round(1000 * latencies[int(len(latencies) * 0.95)], 2),
        "endpoint_cpu_percent": share["percent"],
    }


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backlogs = [r["backlog"] for r in rows]
    figure, axis = plt.subplots(figsize=(6, 3.6))
    axis.plot(backlogs, [r["requests_per_claim"] for r in rows], "o-", label="requests per claim (incl. finish)")
    axis.plot(backlogs, [r["items_read_per_claim"] for r in rows], "s-", label="items read per claim")
    axis.set_xscale("log")
    axis.set_ylim(bottom=0)
    axis.set_xlabel("todo items in the table (backlog)")
    axis.set_ylabel("per claim")
    axis.set_title("PyAnamo: the cost of a claim does not grow with the backlog")
    axis.grid(True, alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backlogs", default="1000,10000,100000")
    parser.add_argument("--claims", type=int, default=200)
    args = parser.parse_args()
    rows = []
    with LocalServer() as server, tempfile.TemporaryDirectory() as tmp:
        for backlog in [int(b) for b in args.backlogs.split(",")]:
            rows.append(measure(server, Path(tmp), backlog, args.claims))
    show(f"Claims against a growing backlog ({server.engine})",
         ["backlog", "claims", "queries/claim", "requests/claim", "items read/claim", "scans", "claim ms (median)",
          "claim ms (p95)", "endpoint CPU %"],
         [[r["backlog"], r["claims"], r["queries_per_claim"], r["requests_per_claim"], r["items_read_per_claim"],
           r["scans"], r["claim_ms_median"], r["claim_ms_p95"], r["endpoint_cpu_percent"]] for r in rows])
    RESULTS.mkdir(exist_ok=True)
    plot(rows, RESULTS / "backlog.png")
    print(f"results: {save('backlog', {'rows': rows})}, plot: {RESULTS / 'backlog.png'}")


if __name__ == "__main__":
    main()
