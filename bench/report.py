"""Render bench/results/*.json as docs/performance.md (`make bench` runs the benchmarks and this).

    python bench/report.py > docs/performance.md
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def mark(ok: bool) -> str:
    return "met" if ok else "**not met**"


def table(columns: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def cpu(row: dict) -> str:
    value = row.get("endpoint_cpu_percent")
    return "not measured (moto, before this column)" if value is None else f"{value} %"


def engine(data: dict) -> str:
    return data["machine"].get("engine", "moto")


def main() -> None:
    out: list[str] = []
    say = out.append
    say("# Performance: what the queue costs next to the work\n")
    say("Every figure below comes from a script in `bench/` (`make bench` runs them all and this page's "
        "renderer, `bench/report.py`); raw results are in `bench/results/`, each with the machine (cores "
        "available to the run) and the endpoint it ran against. The endpoint is `pyanamo local`'s default, "
        "dynalite (Node.js, LevelDB, in memory here), unless a section says moto. Neither is DynamoDB: "
        "request counts, items read and capacity units are what DynamoDB would charge and do; wall times "
        "are what this machine and endpoint give. Next to each timed figure is the **endpoint's CPU share** "
        "during the run (its process tree's CPU time over the wall time, in % of one core): near 100 % the "
        "endpoint, not PyAnamo, set the pace.\n")
    targets: list[list[str]] = []

    for name in ("dispatch", "dispatch-200-items"):
        dispatch = load(name)
        if not dispatch:
            continue
        m, rows = dispatch["machine"], dispatch["rows"]
        if name == "dispatch":
            say("## 1. Dispatch overhead next to GNU parallel\n\nSingle items of `sleep S` (S = 0.5 s for "
                "W <= 16, 2 s for W = 64); W worker processes, or processes x `--items` slots, against moto, "
                "and `parallel -j W` on the same commands. Overhead per item is (W x wall - N x S) / N.\n")
        workers = ",".join(f"{r['processes']}x{r['slots']}" if r["slots"] > 1 else str(r["workers"]) for r in rows)
        say(f"`python bench/dispatch.py --items {rows[0]['items']} --workers {workers}` "
            f"({m['cores']} cores, {m['date']}):\n")
        say(table(["W", "processes x slots", "items", "sleep (s)", "PyAnamo (s)", "GNU parallel (s)", "ratio",
                   "items/s", "overhead per item (ms)", "endpoint CPU"],
                  [[r["workers"], f"{r['processes']} x {r['slots']}", r["items"], r["sleep"], r["pyanamo_seconds"],
                    r["parallel_seconds"], r["ratio"], r["items_per_second"], r["overhead_per_item_ms"],
                    cpu(r)] for r in rows]))
        say("")
        if name == "dispatch":
            small = load("dispatch-200-items")
            alone = [r for r in (small or {}).get("rows", []) if r["workers"] == 1]
            fixed = f"about {alone[0]['overhead_per_item_ms']:.0f} ms at W = 1, where nothing competes" if alone \
                else "measured at W = 1 in the 200-item run"
            say("**Where W = 16 and 64 fall short, and why.** The ideal wall time is N x S / W; GNU parallel "
                "comes within a few percent of it. PyAnamo's throughput instead levels off (the items/s "
                "column) while every item still costs about two DynamoDB requests (benchmark 2): on this "
                f"{m['cores']}-core machine the worker processes, their sub-tasks and moto's server, which is Python "
                "updating three indexes per write, all compete for the same two cores, so the local server "
                "and the CPU are the bottleneck, not the queue's protocol. Fewer processes with more slots "
                "each (16 x 4) spend less CPU on Python processes and do better than 64 x 1. Against "
                "DynamoDB, whose per-request cost is not on the workers' cores, and with tasks of minutes "
                f"(the intended workload), the fixed costs per item ({fixed}) vanish next to the work. The "
                "200-item run below covers W = 1 and 4, which take too long on the full item count.\n")
            for w, limit in ((16, 1.10), (64, 1.25)):
                candidates = [r for r in rows if r["workers"] == w]
                if candidates:
                    best = min(candidates, key=lambda r: r["ratio"])
                    targets.append([f"ratio to GNU parallel at W = {w}", f"<= {limit}",
                                    f"{best['ratio']} ({best['processes']} x {best['slots']})",
                                    mark(best["ratio"] <= limit)])

    cost = load("cost")
    if cost:
        say("## 2. Requests and capacity per completed item\n\n`python bench/cost.py`: tasks are `true`, "
            "so only the queue is measured. Every DynamoDB call of the workers is counted by a botocore "
            "event hook (`PYANAMO_STATS_FILE`), with `ReturnConsumedCapacity`. *Drain probes* are the "
            "32 `Select=COUNT` queries (16 shards x todo, locked) each worker makes once, to decide that "
            "the queue is drained before it exits: a fixed cost per worker, not per item.\n")
        say(table(["case", "items", "workers", "requests/item", "of which drain probes", "Query", "UpdateItem",
                   "claim conflicts/item", "read units/item", "write units/item"],
                  [[c["case"], c["items"], c["workers"], c["requests_per_item"], c["drain_probes_per_item"],
                    c["calls_per_item"].get("Query", 0), c["calls_per_item"].get("UpdateItem", 0),
                    c["conflicts_per_item"], c["read_units_per_item"], c["write_units_per_item"]]
                   for c in cost["cases"]]))
        say("")
        single, bundled, crowd = cost["cases"]
        k = int(bundled["case"].split()[0])
        targets.append(["requests per single item", "<= 3", single["requests_per_item"],
                        mark(single["requests_per_item"] <= 3)])
        targets.append([f"requests per item of {k} sub-tasks", f"<= {2 + k}",
                        f"{bundled['requests_per_item']} ({bundled['requests_per_item_without_drain_probes']} "
                        "without the drain probes)", mark(bundled["requests_per_item_without_drain_probes"] <= 2 + k)])
        targets.append([f"claim conflicts per item at W = {crowd['workers']}", "<= 0.2", crowd["conflicts_per_item"],
                        mark(crowd["conflicts_per_item"] <= 0.2)])

    backlog = load("backlog")
    if backlog:
        rows = backlog["rows"]
        say("## 3. Backlog scaling\n\n`python bench/backlog.py`: claims (and finishes) items one by one "
            f"from tables holding {rows[0]['backlog']:,} to {rows[-1]['backlog']:,} todo items.\n")
        say(table(["backlog", "claims", "queries/claim", "requests/claim", "items read/claim", "Scan calls",
                   "ms/claim on moto"],
                  [[r["backlog"], r["claims"], r["queries_per_claim"], r["requests_per_claim"],
                    r["items_read_per_claim"], r["scans"], r["ms_per_claim_on_moto"]] for r in rows]))
        say("\n![requests and items read per claim against the backlog](../bench/results/backlog.png)\n")
        say("Requests and items read per claim stay flat: a claim reads one slice of one shard of the "
            "state index, whatever the backlog. The milliseconds per claim on moto grow because moto "
            "answers each index query by looking at every item of the table; DynamoDB's cost for a query "
            "depends on what it reads.\n")
        flat = max(r["requests_per_claim"] for r in rows) <= 1.25 * min(r["requests_per_claim"] for r in rows)
        targets.append([f"requests per claim from {rows[0]['backlog']:,} to {rows[-1]['backlog']:,} items",
                        "flat (no growth with the backlog)",
                        " / ".join(str(r["requests_per_claim"]) for r in rows), mark(flat)])

    data = load("import_status")
    if data:
        m = data["machine"]
        single_run, bundled_run = data["import"][0], data["import"][1]
        say(f"## 4. Import\n\n`python bench/import_status.py --items {single_run['items']} --bundled "
            f"{bundled_run['items']} --subtasks {bundled_run['subtasks'] // bundled_run['items']}` "
            f"({m['cores']} cores, {m['date']}):\n")
        say(table(["case", "items", "sub-tasks", "seconds", "items/s", "requests", "peak RSS (MB)"],
                  [[r["case"], r["items"], r["subtasks"], r["seconds"], r["items_per_second"], r["requests"],
                    r["peak_rss_mb"]] for r in data["import"]]))
        say("\nThe import validates the whole file, then writes each item with one conditional PutItem "
            "(16 in flight), so an itemID that exists, or that a concurrent import writes at the same "
            "moment, is never overwritten (before, an existence check and unconditional BatchWriteItem "
            "calls raced: two concurrent imports put running items back to todo). BatchWriteItem carries "
            "no conditions; TransactWriteItems does, but moto copies its whole table for each transaction "
            "(quadratic) and dynalite has none. So the rate on a local endpoint is that endpoint's rate "
            "for single writes; on DynamoDB it is latency-bound (16 requests in flight), and a new "
            "on-demand table accepts about 4,000 writes/s, about 1,300 items/s at 3 write units an item "
            "(see below).\n")
        single = data["import"][0]
        targets.append(["import rate", ">= 2,000 items/s", single["items_per_second"],
                        mark(single["items_per_second"] >= 2000)])
        say(f"## 5. Status\n\n`pyanamo status --json` on the {data['status'][0]['items']:,}-item table:\n")
        say(table(["items", "seconds on moto", "items read", "Query calls", "Scan calls", "peak RSS (MB)"],
                  [[r["items"], r["seconds"], r["items_read"], r["calls"].get("Query", 0), r["scans"],
                    r["peak_rss_mb"]] for r in data["status"]]))
        say("\n`status` reads each item's index entry once with paginated Query calls (64 partitions: 4 "
            "states x 16 shards), never a Scan. Its time on moto is dominated by moto, which looks at "
            "every item for every index query; on DynamoDB the same reads are about 15 MB of index "
            f"entries in the {data['status'][0]['calls'].get('Query', 0)} Query calls above (at least one "
            "per partition, then 1 MB pages).\n")
        st = data["status"][0]
        targets.append([f"status on {st['items']:,} items", "< 5 s on 100,000 items, no Scan",
                        f"{st['seconds']} s on moto, {st['scans']} Scan calls",
                        mark(st["seconds"] < 5 and not st["scans"])])

    footprint = load("footprint")
    if footprint:
        say("## 6. Worker footprint\n\n`python bench/footprint.py`:\n")
        say(table(["case", "RSS (MB)", "CPU (% of one core)", "threads"],
                  [[r["case"], r["rss_mb"], r["cpu_percent"], r["threads"]] for r in footprint["rows"]]))
        say("\nAn idle worker polls with exponential backoff (0.2 s doubling to a quarter of the lease, at "
            "most 2 s; a poll behind live items costs one or two queries), so waiting costs almost "
            "nothing; it exits as soon as the queue is drained.\n")
        idle = footprint["rows"][0]
        targets.append(["idle worker", "exponential backoff, no busy loop", f"{idle['cpu_percent']} % of a core",
                        mark(idle["cpu_percent"] < 5)])

    say("## Targets\n")
    say(table(["target", "wanted", "measured", ""], targets))
    say("")
    rate = data["import"][0]["items_per_second"] if data else None
    say(BEYOND.format(import_rate=f"{rate:,}" if rate else "?",
                      import_minutes=round(1_000_000 / rate / 60) if rate else "?"))
    print("\n".join(out))


BEYOND = """## Beyond one machine: 1,000 workers, 1,000,000 items

By calculation from DynamoDB's published limits: a partition serves at most 1,000 write and
3,000 read request units per second; a new on-demand table absorbs up to 4,000 writes/s at
once (then up to double its previous peak); and a write to the table that also writes a global
secondary index is throttled when that index's partition cannot take it (back-pressure).

**What each item writes to the state index.** The state index's key is `State_Shard`
(`todo#00` … `failed#15`). Moving an item between states changes its index key, which DynamoDB
performs as a delete in the old index partition and a put in the new one. Per item: the claim
(todo → locked: 2 index writes), each heartbeat (the lease expiry is the locked item's sort key:
2 writes), each sub-task result (a projected counter changes: 1 write), and the end
(locked → done: 2 writes). Index entries are about 150 bytes, so each write is 1 unit.

**The hot spot without sharding.** With one partition per state (`todo`, `locked`, …), every
claim and every completion passes through the single `locked` partition. 1,000 workers on
1-second tasks claim and finish 1,000 items/s: 2,000 writes/s on one index partition, twice its
limit, and the back-pressure would throttle the workers' writes to the table itself.

**With 16 shards per state** (the design implemented here, `schema.STATE_SHARDS`), the same
traffic spreads by a hash of the itemID: 1,000 items/s × 4 state-changing writes ÷ 16 shards ≈
125 writes/s on the busiest `locked#NN` partition after the claim and completion writes are
split between the `todo#`, `locked#` and `done#` partitions — about an eighth of the limit.
Heartbeats add little: 1,000 held items renewed every third of a 300 s lease is 10 renewals/s
(20 writes/s over 16 partitions). Tasks of minutes rather than seconds (the real workload)
divide all of this by 60 or more.

**Claims do not read the backlog.** A claim queries one shard from a random rank, `Limit 8`,
and tries those candidates: the read is 8 index entries (about 1 KB, half a read unit) whatever
the backlog holds (benchmark 3). Random ranks also spread 1,000 claimers over 16 × 8 slices of
the index, which keeps conflicts low (benchmark 2 measures them at 64 workers).

**Importing 1,000,000 items.** Each new item is one table write plus one write to the state
index and one to the task index (the instance index gets entries only when an item is claimed):
about 3 write units for an item under 1 KB. At the import rate measured above
({import_rate} items/s) a million items take about {import_minutes} minutes of the client's
time; a new on-demand table takes 4,000 writes/s at first, i.e. about 1,300 items/s, so a first
import of that size is held to that rate (boto3 retries the throttled writes; nothing is lost)
unless the table is pre-warmed.

**Status at 1,000,000 items.** `status` reads every index entry once: about 150 MB, some 19,000
read units (eventually consistent, 4 KB each at half a unit), a fraction of a cent per call, and 64
partitions queried 16 at a time. The client then parses a million rows, which takes seconds of
Python time; the backlog scaler instead counts with `Select=COUNT` and stops as soon as it knows
enough. Keeping per-state counters in the table would make `status` O(1) at the price of a hot
counter item; it is not implemented.
"""


if __name__ == "__main__":
    main()
