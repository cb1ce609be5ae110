"""Scenario 4: a fifth of all DynamoDB requests answered with throttling errors."""

from __future__ import annotations

import re
import time

from pyanamo.queue import TaskQueue
from pyanamo.schema import ItemState

from faultkit import NOT_RECORDED, STOPPED, Analysis, FaultProxy, Figures, measured
from helpers import cli, write_task_file


def test_throttling(aws_env, dynamodb_url, client, table, tmp_path, workers, recorder, soak):
    items = 200 if soak else 30
    rows = [f"t{n:03d}|S|{recorder.command(0.05)}" for n in range(items)]
    with FaultProxy(dynamodb_url, throttle=0.2) as proxy:
        via_proxy = {**aws_env, "AWS_ENDPOINT_URL_DYNAMODB": proxy.url}
        imported = cli("import", table, str(write_task_file(tmp_path / "t.txt", rows)), env=via_proxy)
        assert imported.returncode == 0, imported.stderr
        started = time.monotonic()
        for _ in range(3):
            workers.start(table, "--lease", "10", env={"AWS_ENDPOINT_URL_DYNAMODB": proxy.url})
        codes = workers.wait_all(timeout=300)
        elapsed = time.monotonic() - started
        counts = dict(proxy.counts)
    assert codes == [0, 0, 0]
    assert counts["throttled"] > 0.1 * (counts["throttled"] + counts["forwarded"])
    queue = TaskQueue(client, table)
    for n in range(items):
        assert queue.get(f"t{n:03d}").state is ItemState.DONE
    analysis = Analysis(recorder.runs())
    assert analysis.overlaps() == [] and min(analysis.completed().values()) >= 1
    # A renewal or a result write throttled again and again waits out botocore's backoff (up to 20 s
    # per retry) past the 10 s lease: its worker gives the item up, and the sub-task runs once more,
    # never beside the first (a full run on a loaded machine saw one). Only such reruns are allowed,
    # each with its worker's own account of the lost lease.
    duplicates = analysis.duplicates()
    abandoned = sum(w.log_path.read_bytes().count(b'"event": "item_abandoned"') for w in workers.processes)
    assert set(duplicates) <= {NOT_RECORDED, STOPPED} and sum(duplicates.values()) <= abandoned, \
        (duplicates, abandoned)
    Figures("4. throttling", runs=1, items=items, subtasks=items,
            faults=f"{counts['throttled']} of {counts['throttled'] + counts['forwarded']} requests throttled "
                   "(HTTP 400, ProvisionedThroughputExceeded / Throttling), import included",
            **measured(queue, {f"t{n:03d}": ItemState.DONE for n in range(items)}, analysis),
            recovery=f"retried by boto3's standard mode; drained in {elapsed:.1f} s").save()


def test_an_import_throttled_past_its_retries_stops_and_says_which_items_were_not_written(
        aws_env, client, table, tmp_path):
    """One item's put is throttled on every attempt: the import stops sending, lets the puts in
    flight finish, counts what it wrote, and exits 1 with the cause; importing again adds the rest."""
    items = 300
    tasks = write_task_file(tmp_path / "t.txt", [f"t{n:03d}|S|echo {n}" for n in range(items)])
    with FaultProxy(aws_env["AWS_ENDPOINT_URL_DYNAMODB"]) as proxy:
        proxy.throttle_when = lambda body: re.search(rb'"itemID":\s*\{"S":\s*"t100"\}', body) is not None
        via_proxy = {**aws_env, "AWS_ENDPOINT_URL_DYNAMODB": proxy.url, "AWS_MAX_ATTEMPTS": "2"}
        stopped = cli("import", table, str(tasks), env=via_proxy)
    assert stopped.returncode == 1, stopped.stderr
    imported = int(re.search(r"imported (\d+) items", stopped.stdout).group(1))
    written = {row["itemID"]["S"] for row in client.scan(TableName=table)["Items"]}
    assert len(written) == imported and "t100" not in written and 100 <= imported < items
    assert stopped.stderr.count("\n") == 1 and "Rate exceeded" in stopped.stderr
    assert f"{items - imported} of the file's {items} items were not written" in stopped.stderr
    again = cli("import", table, str(tasks), env=aws_env)
    assert again.returncode == 0, again.stderr
    assert f"left {imported} existing items untouched" in again.stdout
    assert TaskQueue(client, table).get("t100").state is ItemState.TODO
