"""Render the fault-injection figures (JSON lines) as docs/reliability.md.

Usage: python tests/faults/render_report.py build/faults.jsonl > docs/reliability.md
(`make reliability` runs the suite and this; `make reliability SOAK=--soak` the long form.)
"""

from __future__ import annotations

import json
import os
import platform
import sys
from datetime import UTC, datetime

INTRO = """# Reliability: the fault-injection suite

`tests/faults` runs real `pyanamo worker` processes against moto's DynamoDB server over HTTP and
injects the failures users meet on the systems they run today. Every sub-task appends `start`
and `end` records (item, sub-task, worker, time) to a file; each scenario then checks the table
and those records: every item done, no two executions of one sub-task overlapping in time, and
every extra execution explained. CI runs the short form of every scenario (`make test`); the
figures below come from `{command}` on {machine}, {date}.

Column meanings: *overlaps* counts sub-tasks two of whose executions ran at the same time;
*duplicates* counts executions beyond the first and says why each one happened.
"""

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
  refused, as designed). The chaos scenario uses 5 s; the fleet default is 300 s.

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


def main(path: str) -> None:
    rows = [json.loads(line) for line in open(path) if line.strip()]
    rows.sort(key=lambda r: r["scenario"])
    soak = os.environ.get("SOAK")
    command = "make reliability" + (f" SOAK={soak}" if soak else "")
    machine = f"{os.cpu_count()} cores, Python {platform.python_version()}"
    date = datetime.now(UTC).strftime("%Y-%m-%d")
    print(INTRO.format(command=command, machine=machine, date=date))
    print("| scenario | items | sub-tasks | faults injected | items lost | overlaps | duplicates (why) | recovery |")
    print("| --- | ---: | ---: | --- | ---: | ---: | --- | --- |")
    for r in rows:
        why = f"{r['duplicates']} ({cell(r['why'])})" if r["duplicates"] else "0"
        print(f"| {r['scenario']} | {r['items']} | {r['subtasks']} | {cell(r['faults'])} | {r['lost']} | "
              f"{r['overlaps']} | {why} | {cell(r['recovery'])} |")
    print(HARDENING)


if __name__ == "__main__":
    main(sys.argv[1])
