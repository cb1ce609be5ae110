"""Render the fault-injection figures (JSON lines) as docs/reliability.md.

Usage: python tests/faults/render_report.py build/faults.jsonl [LONG.jsonl] > docs/reliability.md
(`make reliability` runs the suite and this; `make reliability SOAK=--soak` the long form.)
A second file holds rows of single scenarios run in their long form (``--soak``), listed after
the rest with "(long form)" and the command that produced them (LONG_COMMAND).
"""

from __future__ import annotations

import json
import os
import platform
import re
import sys
from datetime import UTC, datetime
from pathlib import Path

INTRO = """# Reliability: the fault-injection suite

`tests/faults` runs real `pyanamo worker` processes against a DynamoDB-compatible server over HTTP
— dynalite, `pyanamo local`'s default, unless `--engines moto` or `--full-matrix` is given — and
injects the failures users meet on the systems they run today. Every execution of a sub-task is
recorded — by the sub-task itself (`start` and `end` lines) or by the workers' own
`subtask_started`/`subtask_finished` events — and each scenario then checks the table and those
records: every item in the state it must end in, no two executions of one sub-task overlapping
in time, and every extra execution explained. Every figure in the table is measured by the
scenario that prints it. CI runs the short form of every scenario (`make test`); the
figures below come from `{command}` on {machine}, {date}.

Column meanings: *items lost* counts items not in the state the scenario must end in (done, or
failed where failing is the point); *overlaps* counts sub-tasks two of whose executions ran at
the same time; *duplicates* counts executions beyond the first and says why each one happened.
"""

FLEET = Path(__file__).with_name("fleet_faults.md")  # the fleet's faults, written once there

HARDENING = """
## The hardening it forced

- **A forced `reset ITEM_ID` revokes, it does not requeue.** Requeueing a live item let a second
  worker start it while the first ran on until its next heartbeat. Now the lease token is
  replaced (the holder's next renewal fails and it kills the item's processes) and the item only
  becomes claimable when the old lease runs out (scenario 9).
- **`import --replace` never overwrites an item a worker holds** (a conditional put), for the same
  reason (scenario 9).
- **An unreachable table is not a drained queue.** Workers back off and retry for
  `--outage-limit` seconds (default 900) instead of quitting after the linger time (scenario 3).
- **A worker that cannot renew its lease stops the item's process group before the lease runs
  out**, from a watchdog thread that never waits on the network, so it cannot run alongside the
  next owner (scenario 3).
- **Spot interruption notices** from the metadata service stop the worker the way SIGTERM does:
  item back to todo, finished sub-tasks kept, no attempt used (scenario 5).
- **Leases need room on a busy machine**: with a 2 s lease on 2 saturated cores a renewal can
  land after the lease ran out (the item is then reclaimed and the late worker's writes are
  refused, as designed). The chaos scenario uses 10 s; the fleet default is 300 s.
- **The chaos scenario's own flake** was in its analysis, not in PyAnamo: the kill time was
  taken before the process tree was frozen, so a sub-task that wrote its end record during the
  kill was counted as "finished, but its result could not be recorded (lease lost)". The kill
  time is now taken when the kill is complete.

### Round 2 (scenarios 10-18)

- **Nothing a sub-task starts outlives it** (10): each sub-task runs under a supervisor that is a
  child subreaper with a parent-death signal, so processes that left the process group or
  session (`setsid`, `nohup`, `timeout`, a double fork) are killed when the sub-task ends or
  times out, and a worker killed by SIGKILL takes its sub-task's whole tree down with it. Before,
  a SIGKILLed worker's `bash -c` ran on beside the next owner's run.
- **An item that kills its workers fails** (11): abandoned claims are counted on the item when it
  is reclaimed; after `--max-claims` (3) it is `failed`, naming the last holder. Before, such an
  item cycled through the fleet with `Attempts 0`.
- **A sick worker gives items back and exits** (12): a worker that cannot start sub-tasks where it
  runs releases the item (no attempt used), backs off, and exits 1 after 3 failures in a row.
  Before, it claimed in a tight loop and left most of the queue `locked`.
- **Malformed items and refused writes fail the item** (13) instead of looking like an outage;
  an item near DynamoDB's size limit whose result cannot be written is failed with the reason
  (its stored tails dropped first) instead of being retried for ever. The import refuses items
  whose sub-tasks could not fit their results, and the worker sizes stored tails in stored
  bytes (7: an item of many sub-tasks printing invalid UTF-8 stays under its budget).
- **Any DynamoDB-compatible endpoint** (14): when a failed conditional write comes back without
  the old item, the claim reads it (consistent GetItem). Claims try a bounded number of
  candidates per call, and a stopping worker exits within the kill grace plus 5 s even while
  every request hangs (15).
- **User text is data, exit statuses mean something** (16, 17): stderr lines that look like rich
  markup are shown as written; `logs | head` ends quietly; `status --watch` on an empty table
  says so; `worker` and `status` exit 3 when items failed; signals are recorded as 128 + N with
  their names.
- **Imports never overwrite** (18): every item is a conditional put, so two imports of the same
  items while workers run them write each item once and nothing runs twice. Before, the
  existence check and the unconditional batch write raced.
- Two ways in which moto differs from DynamoDB were found and are handled by `pyanamo local`:
  moto applies part of an update it then refuses as too large (the endpoint now restores the
  item), and it limits items to 405,000 bytes (DynamoDB: 409,600); it also accepts a `SET` into
  a path whose parent is a string, which DynamoDB refuses.
- Running the scenarios on dynalite found three more differences: it refuses writes to a table
  still being created even with its creation delay at 0 (as DynamoDB does: the tests wait for
  ACTIVE); it returns no old item from a failed conditional write (scenario 14's case, natively:
  a lost claim costs one consistent GetItem there); and, being faster, it exposed a race in
  scenario 18's set-up (workers started before the import wrote anything found an empty table
  and exited drained — the scenario now starts them once the first item is in).

### Round 3: outputs (scenario 19)

- **Only the attempt that holds the lease commits its outputs.** Each attempt writes into a fresh
  `$PYANAMO_OUTDIR`; the worker uploads a done attempt's files under a prefix of that attempt's
  own, tagged `pyanamo-commit=pending`, and names them in a manifest (path, size, sha256) written
  in the same lease-fenced write as the result. A worker whose lease was taken while it uploaded
  is refused that write and deletes its uploads (19b: every refused attempt's objects gone); a
  worker killed while uploading leaves objects no manifest names, still tagged for the results
  bucket's expiry rule, and unfinished multipart uploads the rule aborts (19a). In both, every
  committed file was downloaded and its sha256 checked. Before, the fleet had no outputs at all:
  results died with the instance.

### Round 4: faults from outside the model (scenarios 20-29)

- **The local endpoint survives its clients** (20): dynalite rethrows the "aborted" error of a
  request whose client went away and exits; `pyanamo local` now runs it through its own server
  script, which drops such a request instead. If dynalite stops anyway, `pyanamo local` says why
  in one line with its last stderr line and exits 1, or restarts it (at most 3 times) when its
  tables are on disk; a full disk is named and not retried. Before, it exited 0 silently and an
  in-memory queue was gone after 14-30 SIGKILLed workers.
- **Each execution has its own log folder** (21): `attempt-K-LEASE/`, so a reclaimed attempt no
  longer overwrites the first run's log.
- **Escape sequences never reach the terminal** (22): `logs`, `status` and `ps` print control
  characters from the table as `\\xNN`.
- **The crash limit counts crashes, not pauses** (23): a reclaim records the abandoned lease's
  token, and a holder alive after losing its lease records its token as returned; `--max-claims`
  counts only abandoned leases whose holder never came back.
- **A sub-task never outlives its lease** (24): each supervisor holds the lease deadline on its
  own monotonic clock, moved on by each renewal through a pipe, and kills the sub-task's tree
  when it passes. The deadline is the watchdog's: a quarter of the lease before the lease runs
  out (30 s of a 120 s lease), measured from the renewal's answer; nobody may reclaim before the
  lease has run out on the endpoint's clock, so the quarter lease is the room for the kill itself
  and for the two clocks' disagreement (under a second, below). A worker paused by SIGSTOP or
  Ctrl-Z (its supervisors are in their own sessions and run on) can no longer leave its sub-task
  running beside the next owner's.
- **Containment survives the supervisor** (25): the worker is the subreaper of last resort; when
  a supervisor is killed, the worker kills what it left (processes marked with the worker's ID)
  and records exit 125 "supervisor killed", never the sub-task's own SIGKILL. Where the worker
  may create cgroups (cgroup v2, root or a delegated subtree: the fleet's unit has
  `Delegate=yes`), each sub-task also runs in a cgroup of its own, killed whole through
  `cgroup.kill`: a process that leaves the tree and clears its environment is killed too, and a
  sub-task whose worker and supervisor were killed together is killed by the next worker that
  starts on the machine (10c: it runs on until then). Without cgroups that last case escapes.
- **Leases are judged on the endpoint's clock** (26): every answer's `Date` header bounds the
  endpoint's time on the monotonic clock; the bounds, intersected over answers, pin it to under
  a second, and this machine's wall clock is used only while it lies within them. With clocks
  ±90 s apart, no live lease was taken and a dead fast worker's item was reclaimed after the
  lease, not the lease plus 90 s.
- **Import stops at Ctrl-C** (27): a window of 64 puts is in flight; Ctrl-C lets those finish
  (each writes a whole item), says how many items were not written and exits 130. Memory stays
  flat in the file's size (27b): rows are checked as they are read and kept in a private
  temporary SQLite file, the checks that span rows are queries, and items are read back one at a
  time while they are written (dependencies are resolved in memory: their edges only).
- **Malformed stored data never crashes anything** (28): one tolerant reader of run records
  (`pyanamo.runs`) names the malformed attributes; `reset` and `cancel` skip an unreadable item,
  name it, handle the others and exit 1.
- **Index keys that disagree with the state are repaired** (29): workers re-index such items when
  a claim meets them, and `pyanamo repair TABLE` finds the rest with a Scan (dry run first).
- **A release lost with its worker is made by the next** (31): an item that waits for others
  (workflows) is released by the worker that ends its last upstream; killed between its `done`
  write and the release, that worker leaves the waiting item as it was, and the next worker's
  drain check (or the backlog scaler, with the fleet at zero) settles it from the table and runs
  it once. The release's writes are conditional on the waiting state and idempotent.
- **The local queue is the operator's alone** (`tests/e2e/test_local_endpoint.py`): requests must
  be signed with a secret in a 0600 file, and every answer proves the endpoint holds it; another
  user (`nobody`) is refused and can read neither the secret nor the data folder (0700), and an
  impostor on the port is refused by the operator's CLI and workers.

{fleet}
## Security checks

`make test` runs `bandit` over `runtime/pyanamo` and fails on any finding of medium or high
severity (`tests/unit/test_security.py`); the remaining low findings are the worker running
`bash` by design, `random` used for jitter and claim spreading, and attribute names that look
like passwords. `make audit` runs `pip-audit --strict` over the installed, pinned packages; it
needs PyPI's JSON API or OSV, which the build environment this was written in cannot reach, so
it is not part of CI (`--strict` makes it fail rather than report an unchecked set as clean).
"""


def cell(value) -> str:
    if isinstance(value, dict):
        return "; ".join(f"{n} {why}" for why, n in value.items()) or "—"
    return str(value).replace("|", "\\|")


def scenario_order(row: dict) -> tuple[int, str]:
    return int(re.match(r"\d+", row["scenario"]).group(0)), row["scenario"]


def main(path: str, long_form: str | None = None) -> None:
    rows = sorted((json.loads(line) for line in open(path) if line.strip()), key=scenario_order)
    if long_form:
        extra = sorted((json.loads(line) for line in open(long_form) if line.strip()), key=scenario_order)
        rows += [{**r, "scenario": f"{r['scenario']} (long form: `{os.environ['LONG_COMMAND']}`)"} for r in extra]
    soak = os.environ.get("SOAK")
    # the command that produced the figures (FAULTS_COMMAND: when they were recorded by another run,
    # e.g. `make test` with PYANAMO_FAULTS_REPORT set)
    command = os.environ.get("FAULTS_COMMAND") or "make reliability" + (f" SOAK={soak}" if soak else "")
    load = os.getloadavg()[1]  # the 5-minute average as the suite ends: how busy the machine was
    machine = (f"{os.cpu_count()} cores (load average {load:.1f} over the last 5 minutes), "
               f"Python {platform.python_version()}")
    date = datetime.now(UTC).strftime("%Y-%m-%d")
    print(INTRO.format(command=command, machine=machine, date=date))
    print("| scenario | items | sub-tasks | faults injected | items lost | overlaps | duplicates (why) | recovery |")
    print("| --- | ---: | ---: | --- | ---: | ---: | --- | --- |")
    for r in rows:
        why = f"{r['duplicates']} ({cell(r['why'])})" if r["duplicates"] else "0"
        print(f"| {r['scenario']} | {r['items']} | {r['subtasks']} | {cell(r['faults'])} | {r['lost']} | "
              f"{r['overlaps']} | {why} | {cell(r['recovery'])} |")
    print(HARDENING.replace("{fleet}", FLEET.read_text()))


if __name__ == "__main__":
    main(*sys.argv[1:3])
