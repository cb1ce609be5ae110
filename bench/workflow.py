"""Benchmark 10: the cost of a workflow's release, with no driver.

    python bench/workflow.py [--pairs 200] [--workers 4] [--fan-in 200]

P pairs of items (``up-N`` of `true`, then ``down-N`` of `true` waiting for it: ``After``) run by
W local `pyanamo worker` processes against `pyanamo local` (dynalite), next to the same 2 x P
items without dependencies. Reports, from the items' own stamps (the worker's Done_Date of the
upstream and the Lock_Date of the dependent's claim, both in ms), the median and p99 of the time
from an upstream's `done` to its dependent's claim, and the DynamoDB requests a release costs (the
difference in requests between the two runs, per released item). Then a fan-in: F items and one
that waits for all of them (task:call): the time from the last one's `done` to its claim.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from pyanamo.aws import Endpoint, dynamodb_client
from pyanamo.gateway import TableGateway

from common import PYANAMO, LocalServer, merge_stats, save, show, write_task_file


def epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def run(server: LocalServer, folder: Path, rows: list[str], workers: int, name: str,
        extra: tuple[list[str], tuple[str, ...]] | None = None) -> tuple[str, dict[str, Any]]:
    """Import ``rows`` (header with After), run W workers to the end; the table and their requests."""
    table = server.new_table()
    path = write_task_file(folder / f"{name}.txt", rows, header="itemID|taskID|TaskScript|After")
    subprocess.run([*PYANAMO, "import", table, str(path)], env=server.env, check=True, capture_output=True)
    if extra is not None:
        more = write_task_file(folder / f"{name}-more.txt", extra[0])
        subprocess.run([*PYANAMO, "import", table, str(more), *extra[1]], env=server.env, check=True,
                       capture_output=True)
    stats = [folder / f"{name}-{n}.json" for n in range(workers)]
    processes = [
        subprocess.Popen([*PYANAMO, "worker", table, "--lease", "60", "--quiet", "--log-dir", str(folder / "logs"),
                          "--workdir", str(folder), "--outputs", str(folder / "outputs")],
                         env={**server.env, "PYANAMO_STATS_FILE": str(stats[n])},
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for n in range(workers)
    ]
    codes = [p.wait() for p in processes]
    assert codes == [0] * workers, codes
    return table, merge_stats(stats)


def requests(stats: dict[str, Any]) -> int:
    return sum(stats["calls"].values())


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--fan-in", type=int, default=200)
    args = parser.parse_args()
    with LocalServer() as server, tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        client = dynamodb_client(Endpoint(url=server.url))
        plain_rows = [f"i{n:05d}|T|true|" for n in range(2 * args.pairs)]
        _, plain = run(server, folder, plain_rows, args.workers, "plain")
        pair_rows = [f"up-{n:05d}|up|true|" for n in range(args.pairs)]
        pair_rows += [f"down-{n:05d}|down|true|up-{n:05d}" for n in range(args.pairs)]
        table, paired = run(server, folder, pair_rows, args.workers, "pairs")
        gateway = TableGateway(client, table)
        delays = []
        for n in range(args.pairs):
            up, down = gateway.get(f"up-{n:05d}"), gateway.get(f"down-{n:05d}")
            delays.append(1000 * (epoch(down.lock_date) - epoch(up.done_date)))
        fan_rows = [f"c{n:05d}|call|true|" for n in range(args.fan_in)]
        table, _ = run(server, folder, fan_rows, args.workers, "fan-in",
                       extra=(["joint|joint|true"], ("--after", "task:call")))
        gateway = TableGateway(client, table)
        last = max(epoch(gateway.get(f"c{n:05d}").done_date) for n in range(args.fan_in))
        fan_in_ms = 1000 * (epoch(gateway.get("joint").lock_date) - last)
    row = {
        "pairs": args.pairs, "workers": args.workers, "fan_in": args.fan_in,
        "release_to_claim_ms_median": round(statistics.median(delays), 1),
        "release_to_claim_ms_p99": round(percentile(delays, 0.99), 1),
        "release_to_claim_ms_max": round(max(delays), 1),
        "requests_plain": requests(plain), "requests_pairs": requests(paired),
        "requests_per_release": round((requests(paired) - requests(plain)) / args.pairs, 2),
        "calls_plain": plain["calls"], "calls_pairs": paired["calls"],
        "fan_in_release_to_claim_ms": round(fan_in_ms, 1),
    }
    show("workflow release", ["pairs", "workers", "median (ms)", "p99 (ms)", "requests per release",
                              f"fan-in {args.fan_in}->1 (ms)"],
         [[args.pairs, args.workers, row["release_to_claim_ms_median"], row["release_to_claim_ms_p99"],
           row["requests_per_release"], row["fan_in_release_to_claim_ms"]]])
    print(save("workflow", {"rows": [row]}))


if __name__ == "__main__":
    main()
