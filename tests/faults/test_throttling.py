"""Scenario 4: a fifth of all DynamoDB requests answered with throttling errors."""

from __future__ import annotations

import time

from pyanamo.queue import TaskQueue
from pyanamo.schema import ItemState

from faultkit import Analysis, FaultProxy, Figures, measured
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
    assert analysis.overlaps() == [] and set(analysis.completed().values()) == {1}
    assert analysis.duplicates() == {}
    Figures("4. throttling", runs=1, items=items, subtasks=items,
            faults=f"{counts['throttled']} of {counts['throttled'] + counts['forwarded']} requests throttled "
                   "(HTTP 400, ProvisionedThroughputExceeded / Throttling), import included",
            **measured(queue, {f"t{n:03d}": ItemState.DONE for n in range(items)}, analysis),
            recovery=f"retried by boto3's standard mode; drained in {elapsed:.1f} s").save()
