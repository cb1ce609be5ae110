"""Benchmark 7: `pyanamo report` on a finished run of 100,000 items.

    python bench/report_bench.py [--items 100000] [--workers 64]

Writes N finished items (each with one sub-task run record, as workers leave them, spread over
W worker lanes and an hour) straight into a fresh table with BatchWriteItem, plus W worker
records, then times `pyanamo report --html --trace` and reports its requests (Query and
BatchGetItem, no Scan), its peak memory, and the sizes of the HTML and the trace.
"""

from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path

from common import PYANAMO, LocalServer, save, show, timed


def rows(items: int, workers: int) -> list[dict]:
    from pyanamo.model import Item, Subtask, iso, to_dynamo
    from pyanamo.schema import Attr, ItemState, SubtaskStatus, state_shard

    start = 1_800_000_000.0
    random.seed(7)
    out = []
    for n in range(items):
        worker = n % workers
        began = start + random.uniform(0, 3600)
        wall = random.uniform(20, 200)
        failed = n % 97 == 0
        item = Item(f"s{n:07d}", f"S{n % 1000:03d}", (Subtask("Task_0", f"bash call.sh s{n:07d} chr{n % 22 + 1}"),))
        row = dict(item.new_row())
        row[Attr.STATE] = to_dynamo(ItemState.FAILED.value if failed else ItemState.DONE.value)
        row[Attr.STATE_SHARD] = to_dynamo(state_shard(ItemState.FAILED if failed else ItemState.DONE, item.item_id))
        row[Attr.TASK_SCRIPT] = to_dynamo({"Task_0": {"Script": item.subtasks[0].script, "Attempts": 1,
                                                      "Status": (SubtaskStatus.FAILED if failed else
                                                                 SubtaskStatus.DONE).value,
                                                      "ExitCode": 1 if failed else 0}})
        row[Attr.LOG_SUMMARY] = to_dynamo({"Task_0": {
            "Started": iso(began), "Ended": iso(began + wall), "Wall_Time": round(wall, 3),
            "CPU_Time": round(wall * 0.9, 3), "Peak_RSS_KB": random.randint(200_000, 4_000_000),
            "ExitCode": 1 if failed else 0, "Attempt": 1, "InstanceID": f"i-{worker:04x}", "Host": f"ip-{worker}",
            "Worker_ID": f"ip-{worker}:1", "Instance_Type": "m7i.large", "Earlier_Exits": [],
            "Cost_USD": round(0.1 * wall / 3600, 8)}})
        row[Attr.LOG] = to_dynamo({"Task_0": {"stdout": "", "stderr": "error: chr truncated\n" if failed else ""}})
        if failed:
            row[Attr.LAST_ERROR] = to_dynamo("Task_0: error: chr truncated")
        out.append(row)
    return out


def load(server: LocalServer, table: str, items: int, workers: int) -> None:
    import os

    from pyanamo.aws import Endpoint, dynamodb_client
    from pyanamo.model import iso
    from pyanamo.queue import TaskQueue

    os.environ.update({k: v for k, v in server.env.items() if k.startswith("AWS_")})
    client = dynamodb_client(Endpoint(), pool=4)
    batch: list[dict] = []
    for row in rows(items, workers):
        batch.append({"PutRequest": {"Item": row}})
        if len(batch) == 25:
            write(client, table, batch)
            batch = []
    if batch:
        write(client, table, batch)
    queue = TaskQueue(client, table)
    for w in range(workers):
        queue.put_worker_record(f"pyanamo-worker#ip-{w}:1#0", {
            "Record_Type": "worker", "Worker_ID": f"ip-{w}:1", "InstanceID": f"i-{w:04x}", "Host": f"ip-{w}",
            "Instance_Type": "m7i.large", "Lifecycle": "spot", "Zone": "us-east-1a", "Price_Per_Hour": 0.1,
            "Price_Source": "spot-price-history", "Slots": 1, "Started": iso(1_800_000_000.0),
            "Last_Seen": iso(1_800_003_800.0), "Ended": iso(1_800_003_800.0), "Items_Done": items // workers,
            "Items_Failed": 0, "Busy_Seconds": 0})


def write(client, table: str, batch: list[dict]) -> None:
    pending = {table: batch}
    while pending:
        pending = client.batch_write_item(RequestItems=pending).get("UnprocessedItems") or {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=64)
    args = parser.parse_args()
    with LocalServer() as server, tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        table = server.new_table()
        load(server, table, args.items, args.workers)
        with server.cpu_share() as share:
            run = timed([*PYANAMO, "report", table, "--html", str(folder / "r.html"), "--trace", str(folder / "t.tsv"),
                         "--json"], server.env, folder / "stats.json")
        assert run.returncode == 0
        row = {"items": args.items, "workers": args.workers, "seconds": round(run.seconds, 1),
               "calls": run.stats["calls"], "scans": run.stats["calls"].get("Scan", 0),
               "peak_rss_mb": round(run.max_rss_mb, 1),
               "html_mb": round((folder / "r.html").stat().st_size / 1e6, 2),
               "trace_mb": round((folder / "t.tsv").stat().st_size / 1e6, 2),
               "endpoint_cpu_percent": share["percent"], "report_cpu_s": run.cpu_seconds,
               "endpoint_cpu_s": round(share["percent"] * run.seconds / 100, 1)}
    show("pyanamo report", ["items", "workers", "seconds", "report CPU s", "endpoint CPU s", "Query",
                            "BatchGetItem", "Scan", "peak RSS MB", "HTML MB", "trace MB"],
         [[row["items"], row["workers"], row["seconds"], row["report_cpu_s"], row["endpoint_cpu_s"],
           row["calls"].get("Query", 0), row["calls"].get("BatchGetItem", 0), row["scans"], row["peak_rss_mb"],
           row["html_mb"], row["trace_mb"]]])
    print(f"results: {save('report', {'rows': [row]})}")


if __name__ == "__main__":
    main()
