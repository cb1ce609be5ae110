"""Render bench/results/*.json as docs/performance.md (`make bench` runs the benchmarks and this).

    python bench/report.py > docs/performance.md
"""

from __future__ import annotations

import json
from pathlib import Path

from pyanamo.gateway import SCAN_SEGMENTS
from pyanamo.lease import CANCEL_CHECK_SECONDS

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

    for name in ("dispatch", "dispatch-200-items", "dispatch-short"):
        dispatch = load(name)
        if not dispatch:
            continue
        m, rows = dispatch["machine"], dispatch["rows"]
        if name == "dispatch":
            say("## 1. Dispatch overhead next to GNU parallel\n\nSingle items of `sleep S` (S = 0.5 s for "
                "W <= 16, 2 s for W = 64); W worker processes, or processes x `--items` slots, against "
                f"{engine(dispatch)}, and `parallel -j W` on the same commands. Overhead per item is "
                "(W x wall - N x S) / N.\n")
        if name == "dispatch-short":
            say("### Short sleeps on this machine's cores\n\nThe same comparison with short tasks and about "
                "three workers per core, where PyAnamo's cost per item weighs most.\n")
        workers = ",".join(f"{r['processes']}x{r['slots']}" if r["slots"] > 1 else str(r["workers"]) for r in rows)
        sleep = f" --sleep {rows[0]['sleep']:g}" if name == "dispatch-short" else ""
        say(f"`python bench/dispatch.py --items {rows[0]['items']} --workers {workers}{sleep}"
            f"{'' if name == 'dispatch' else ' --name ' + name}` ({m['cores']} cores, {m['date']}):\n")
        say(table(["W", "processes x slots", "items", "sleep (s)", "PyAnamo (s)", "GNU parallel (s)", "ratio",
                   "items/s", "overhead per item (ms)", "endpoint CPU"],
                  [[r["workers"], f"{r['processes']} x {r['slots']}", r["items"], r["sleep"], r["pyanamo_seconds"],
                    r["parallel_seconds"], r["ratio"], r["items_per_second"], r["overhead_per_item_ms"],
                    cpu(r)] for r in rows]))
        say("")
        if name == "dispatch-short":
            best = min(rows, key=lambda r: r["ratio"])
            targets.append([f"ratio to GNU parallel on {m['cores']} cores, {rows[0]['items']} x "
                            f"{rows[0]['sleep']:g} s at W = {best['workers']}", "<= 1.1",
                            f"{best['ratio']} ({best['processes']} x {best['slots']})", mark(best["ratio"] <= 1.10)])
        if name == "dispatch":
            profile = load("profile_item")
            per_item = profile["rows"][0] if profile else None
            cpu_note = (f"one worker spends about {per_item['worker_cpu_ms_per_item']} ms of CPU per item "
                        f"(itself, its fork server, the supervisors and bash: benchmark 8)") if per_item else \
                "each item costs the worker CPU time (benchmark 8)"
            say(f"**Where W = 16 and 64 fall short on {m['cores']} cores, and why.** The ideal wall time is "
                "N x S / W; GNU parallel comes within a few percent of it. PyAnamo's fixed cost per item is CPU "
                f"time: {cpu_note}, and the endpoint's share is in the last column. At W = 16 with 0.5 s "
                f"sleeps that is about {16 * 2} items/s wanted from {m['cores']} cores that also run the endpoint: "
                "the CPU, not the queue's protocol, is the limit here. The 16-core figures below (section 9) "
                "separate the two: against moto the endpoint explained most of the gap (1.49 at W = 16), "
                "against dynalite, whose CPU share stayed at 20-33 %, the ratio was 1.09 at W = 16 and 1.086 "
                "at 16 x 4. With tasks of minutes (the intended workload) these milliseconds vanish next to "
                "the work.\n")
            for w, limit in ((16, 1.05), (64, 1.10)):
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
        say(f"Endpoint: {engine(backlog)}; {backlog['machine']['cores']} cores, {backlog['machine']['date']}.\n")
        say(table(["backlog", "claims", "queries/claim", "requests/claim", "items read/claim", "Scan calls",
                   "claim ms (median)", "claim ms (p95)", "endpoint CPU"],
                  [[r["backlog"], r["claims"], r["queries_per_claim"], r["requests_per_claim"],
                    r["items_read_per_claim"], r["scans"], r.get("claim_ms_median", "-"), r.get("claim_ms_p95", "-"),
                    cpu(r)] for r in rows]))
        say("\n![requests and items read per claim against the backlog](../bench/results/backlog.png)\n")
        say("Requests and items read per claim stay flat: a claim reads one slice of one shard of the "
            "state index, whatever the backlog. So does a claim's latency on dynalite, whose index queries "
            "read what they return; moto answered each index query by looking at every item (9.4 ms at "
            "1,000 items, 102 ms at 20,000: the measurements in issue #11), which made claims slower as "
            "the table grew there.\n")
        flat = max(r["requests_per_claim"] for r in rows) <= 1.25 * min(r["requests_per_claim"] for r in rows)
        targets.append([f"requests per claim from {rows[0]['backlog']:,} to {rows[-1]['backlog']:,} items",
                        "flat (no growth with the backlog)",
                        " / ".join(str(r["requests_per_claim"]) for r in rows), mark(flat)])
        if all("claim_ms_median" in r for r in rows):
            latencies = [r["claim_ms_median"] for r in rows]
            targets.append([f"claim latency from {rows[0]['backlog']:,} to {rows[-1]['backlog']:,} items",
                            "flat (no growth with the backlog)", " / ".join(f"{v} ms" for v in latencies),
                            mark(latencies[-1] <= 1.5 * latencies[0] + 1)])

    data = load("import_status")
    if data:
        m = data["machine"]
        single_run, bundled_run = data["import"][0], data["import"][1]
        say(f"## 4. Import\n\n`python bench/import_status.py --items {single_run['items']} --bundled "
            f"{bundled_run['items']} --subtasks {bundled_run['subtasks'] // bundled_run['items']}` "
            f"({m['cores']} cores, {m['date']}):\n")
        say(table(["case", "items", "sub-tasks", "seconds", "items/s", "requests", "peak RSS (MB)", "endpoint CPU"],
                  [[r["case"], r["items"], r["subtasks"], r["seconds"], r["items_per_second"], r["requests"],
                    r["peak_rss_mb"], cpu(r)] for r in data["import"]]))
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
        say(f"## 5. Status\n\n`pyanamo status --json` on the {data['status'][0]['items']:,}-item table "
            f"({engine(data)}):\n")
        say(table(["items", "seconds", "items read", "Query calls", "Scan calls", "peak RSS (MB)", "endpoint CPU"],
                  [[r["items"], r["seconds"], r["items_read"], r["calls"].get("Query", 0), r["scans"],
                    r["peak_rss_mb"], cpu(r)] for r in data["status"]]))
        say("\n`status` reads each item's index entry once with paginated Query calls (80 partitions: 5 "
            "states x 16 shards), never a Scan, plus the worker records (one Query and a BatchGetItem). "
            "On moto the same command took 114 s on 100,000 items (issue #11), nearly all of it in moto, "
            "which looks at every item for every index query; on DynamoDB the same reads are about 15 MB "
            f"of index entries in the {data['status'][0]['calls'].get('Query', 0)} Query calls above (at "
            "least one per partition, then 1 MB pages).\n")
        st = data["status"][0]
        targets.append([f"status on {st['items']:,} items", "< 5 s on 100,000 items, no Scan",
                        f"{st['seconds']} s on {engine(data)}, {st['scans']} Scan calls",
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

    report = load("report")
    if report:
        r = report["rows"][0]
        say(f"## 7. The run report\n\n`python bench/report_bench.py --items {r['items']} --workers {r['workers']}`: "
            f"a finished run of {r['items']:,} items ({r['workers']} workers' lanes) written straight into a table, "
            f"then `pyanamo report --html --trace --json` ({engine(report)}, {report['machine']['cores']} cores):\n")
        say(table(["items", "seconds", "report CPU (s)", "endpoint CPU (s)", "Query", "BatchGetItem", "Scan",
                   "peak RSS (MB)", "HTML (MB)", "trace (MB)"],
                  [[r["items"], r["seconds"], r.get("report_cpu_s", "-"), r.get("endpoint_cpu_s", "-"),
                    r["calls"].get("Query", 0), r["calls"].get("BatchGetItem", 0), r["scans"], r["peak_rss_mb"],
                    r["html_mb"], r["trace_mb"]]]))
        say(f"\nTargets (everyday-use issue): < 15 s {mark(r['seconds'] < 15)}, < 300 MB peak "
            f"{mark(r['peak_rss_mb'] < 300)}, < 5 MB HTML {mark(r['html_mb'] < 5)}. The report reads every item "
            f"with one Scan in {SCAN_SEGMENTS} parallel segments (the item attributes it shows, not the logs) and "
            "then the failed items' logs by ID with BatchGetItem; before, it read the IDs from the state index and the "
            "items with BatchGetItem, which cost dynalite three times the CPU (gateway.SCAN_SEGMENTS has the "
            "figures). It takes the answers as DynamoDB sent them (botocore's model walk took a third of the "
            "time) and builds the report with Python's cycle collector paused (it took more than half the time "
            "of reading 100,000 items). Past 3,000 "
            "attempts each timeline lane shows how many runs were busy at once instead of a bar each, and the task "
            "table is capped at 2,000 rows, so the HTML stays small; the trace has every run and is the file to "
            "load into a notebook. On this machine the endpoint's CPU (dynalite serving the Scan "
            "on the second core) and the report's overlap: the wall time is bounded by the larger of "
            "the two, and the report's own CPU is what DynamoDB would leave.\n")

    profile = load("profile_item")
    if profile:
        p = profile["rows"][0]
        say(f"## 8. Where a worker's time per item goes\n\n`python bench/profile_item.py --items {p['items']}`: "
            f"one worker, `--items 1`, items of `true` ({engine(profile)}, {profile['machine']['cores']} cores). "
            "Medians per item from the worker's own events, and its DynamoDB requests with their latency as "
            "the client sees it (serialization, signing, HTTP and parsing included):\n")
        say(table(["phase", "median (ms)"], [[k, v] for k, v in p["phases_ms_median"].items()]
                  + [["wall time / items", p["ms_per_item"]]]))
        say("")
        say(table(["request", "per item", "ms each"],
                  [[k, v["per_item"], v["ms_each"]] for k, v in p["requests"].items() if v["per_item"]]))
        say(f"\nThe sub-task phase is the supervisor's fork from the worker's fork server, bash "
            f"({p['bash_start_ms']} ms to start `bash -c true`) and the wait for its report. With "
            f"`--launcher process` each sub-task also pays a Python start-up for its supervisor (`python -I -S`: "
            f"{p['supervisor_start_ms']} ms for an empty interpreter here, more with its imports). What is left "
            "per item is two conditional updates (claim, result), about half a Query, and the fork: CPU time of "
            f"{p['worker_cpu_ms_per_item']} ms per item for the worker, its fork server, the supervisor and bash "
            "together. No polling interval or sleep lies on an item's path: the claim of the next item follows "
            "the write-back at once.\n")

    workflow = load("workflow")
    if workflow:
        w = workflow["rows"][0]
        say(f"## 10. Workflows: from an item's `done` to the claim of the item that waited for it\n\n"
            f"`python bench/workflow.py --pairs {w['pairs']} --workers {w['workers']} --fan-in {w['fan_in']}`: "
            f"{w['pairs']} pairs of `true` items, the second of each waiting for the first (`After`), run by "
            f"{w['workers']} worker processes ({engine(workflow)}, {workflow['machine']['cores']} cores); then "
            f"{w['fan_in']} items and one that waits for all of them (`--after task:call`). The times are the "
            "items' own stamps (the upstream's `Done_Date`, the dependent's `Lock_Date`), so they include "
            "waiting for a free worker slot; requests per release are the difference in requests between this "
            f"run and {2 * w['pairs']} items without dependencies, per released item.\n")
        say(table(["median (ms)", "p99 (ms)", "max (ms)", "requests per release",
                   f"fan-in {w['fan_in']} -> 1 (ms)"],
                  [[w["release_to_claim_ms_median"], w["release_to_claim_ms_p99"], w["release_to_claim_ms_max"],
                    w["requests_per_release"], w["fan_in_release_to_claim_ms"]]]))
        say("\nThe worker that ends an upstream releases its dependents itself (a conditional update "
            "striking it off each dependent's `Waiting_On`, and one waking a dependent with nothing left to "
            "wait for) and forgets its memory of empty shards, so it claims what it released at once; no "
            "driver process lies on the path. The pairs' figures are mostly queueing: the dependents wait "
            "behind the upstreams still todo (4 slots for 400 items), and a worker that did not make the "
            "release may skip the todo shards it found empty for up to 5 s (`EMPTY_SHARD_SECONDS`), which "
            "is the tail; the fan-in, released when nothing else is left, shows the release itself.\n")

    per_subtask = load("cpu_per_subtask")
    if per_subtask:
        rows = per_subtask["rows"]
        r0 = rows[0]
        say(f"## 11. CPU per sub-task next to GNU parallel's CPU per job\n\n"
            f"`python bench/cpu_per_subtask.py --items {r0['items']} --workers {r0['workers']} --repeat "
            f"{max(r['run'] for r in rows)}`: {r0['items']} items of `true`, {r0['workers']} worker processes against "
            f"{engine(per_subtask)}, once with each launcher (`fork-server`, the default: supervisors forked by a "
            "fork server each worker starts once; `process`: a supervisor process of its own per sub-task, a "
            f"Python start-up each), and `parallel -j {r0['workers']} true` on the same machine in the same run "
            f"({per_subtask['machine']['cores']} cores). CPU is user + system time: of each worker with what it "
            "waited for (its fork server, supervisors and their bash), of the endpoint's processes, and of GNU "
            "parallel with its jobs. It does not depend on the number of cores.\n")
        say(table(["run", "launcher", "workers + supervisors (ms/item)", "endpoint (ms/item)",
                   "PyAnamo total (ms/item)", "GNU parallel (ms/job)", "ratio", "requests per item",
                   "PyAnamo wall (s)", "parallel wall (s)"],
                  [[r["run"], r.get("launcher", "process"), r["pyanamo_workers_ms"], r["pyanamo_endpoint_ms"],
                    r["pyanamo_total_ms"], r["parallel_ms"], r["ratio"], r["requests_per_item"], r["pyanamo_wall_s"],
                    r["parallel_wall_s"]] for r in rows]))
        default = [r for r in rows if r.get("launcher", "process") == "fork-server"] or rows
        worst = max(r["ratio"] for r in default)
        targets.append(["CPU per sub-task, PyAnamo total over GNU parallel's per job (default launcher)", "<= 2x",
                        f"{worst}x", mark(worst <= 2)])
        by_launcher = {name: [r["pyanamo_workers_ms"] for r in rows if r.get("launcher") == name]
                       for name in ("fork-server", "process")}
        if all(by_launcher.values()):
            fork, own = (sum(v) / len(v) for v in by_launcher.values())
            say(f"\nThe fork server takes the workers' and supervisors' CPU per item from {own:.1f} ms to "
                f"{fork:.1f} ms (means of the runs above). What is left is the worker's own Python per item (its "
                "botocore requests, the run record, the log summaries) and the endpoint's share"
                + ("; together they stay within 2x of GNU parallel's CPU per job.\n" if worst <= 2 else
                   f", which keep it at {worst}x GNU parallel's CPU per job in the worst run: the 2x target is "
                   "not met.\n"))

    baseline = load("moto-16-core-baseline")
    if baseline:
        say("## 9. The 16-core baseline (moto, and dynalite before this change)\n")
        say(f"Quoted, not re-run: {baseline['source']}.\n")
        say(table(["endpoint", "W", "PyAnamo (s)", "GNU parallel (s)", "ratio"],
                  [[d["engine"], d["workers"], d["pyanamo_seconds"], d["parallel_seconds"], d["ratio"]]
                   for d in baseline["dispatch"]]))
        say(f"\n`status` on 100,000 items took {baseline['status_100k_moto_seconds']} s on moto there.\n")
    for extra in sorted(RESULTS.glob("dispatch-*-cores.json")):
        data16 = json.loads(extra.read_text())
        say(f"### {extra.stem}: {data16['machine']['cores']} cores, {engine(data16)}\n")
        say(table(["W", "processes x slots", "PyAnamo (s)", "GNU parallel (s)", "ratio", "endpoint CPU"],
                  [[r["workers"], f"{r['processes']} x {r['slots']}", r["pyanamo_seconds"], r["parallel_seconds"],
                    r["ratio"], cpu(r)] for r in data16["rows"]]))
        say("")

    say("## Targets\n")
    say(table(["target", "wanted", "measured", ""], targets))
    say("")
    rate = data["import"][0]["items_per_second"] if data else None
    say(BEYOND.format(import_rate=f"{rate:,}" if rate else "?",
                      import_minutes=round(1_000_000 / rate / 60) if rate else "?",
                      cancel_every=f"{CANCEL_CHECK_SECONDS:g}",
                      cancel_rate=f"{1 / CANCEL_CHECK_SECONDS:g}",
                      cancel_fleet=f"{1000 / CANCEL_CHECK_SECONDS:,.0f}"))
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

**Cancels take seconds, for one small read per worker.** Each worker looks for its items being
cancelled every {cancel_every} s (`lease.CANCEL_CHECK_SECONDS`): one Query of the instance index
for the locked items its instance holds ({cancel_rate} requests/s per worker, whatever the number
of items it holds: at `--items 4`, a quarter of that per running item), reading index keys only
(a fraction of a read unit); a held item missing from the answer costs one consistent GetItem of
two attributes (the index may lag a fresh claim by a moment). 1,000 workers make {cancel_fleet}
such Queries a second. This is the request count the code makes by construction, not a measured
figure; fault scenario 30 measures the stop time (docs/reliability.md).

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
