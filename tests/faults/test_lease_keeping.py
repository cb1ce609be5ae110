"""Scenario 2: sub-tasks several times longer than the lease are never reclaimed while alive."""

from __future__ import annotations

import time

from pyanamo.queue import TaskQueue
from pyanamo.schema import ItemState

from faultkit import Analysis, Figures, measured
from helpers import cli, write_task_file


def test_long_subtasks_keep_their_lease(aws_env, client, table, tmp_path, workers, recorder, soak):
    lease, seconds, items = 6, (60 if soak else 20), 4  # 6 s: renewals every 2 s, given up 1.5 s before expiry
    rows = [f"long{n}|S|{recorder.command(seconds)}" for n in range(items)]
    assert cli("import", table, str(write_task_file(tmp_path / "t.txt", rows)), env=aws_env).returncode == 0
    started = time.monotonic()
    first = workers.start(table, "--lease", str(lease), "--items", "2")
    second = workers.start(table, "--lease", str(lease), "--items", "2")
    assert workers.wait_all(timeout=seconds * 4) == [0, 0]
    queue = TaskQueue(client, table)
    claims = {}
    for n in range(items):
        row = client.get_item(TableName=table, Key={"itemID": {"S": f"long{n}"}})["Item"]
        claims[f"long{n}"] = int(row["Claims"]["N"])
        assert queue.get(f"long{n}").state is ItemState.DONE
    assert set(claims.values()) == {1}, claims
    analysis = Analysis(recorder.runs())
    assert analysis.overlaps() == [] and set(analysis.completed().values()) == {1}
    assert analysis.duplicates() == {}
    for worker in (first, second):
        assert b"item_abandoned" not in worker.log_path.read_bytes()
    Figures("2. lease keeping", runs=1, items=items, subtasks=items,
            faults=f"sub-tasks of {seconds} s under a {lease} s lease",
            **measured(queue, {f"long{n}": ItemState.DONE for n in range(items)}, analysis),
            recovery=f"no reclaim; {time.monotonic() - started:.1f} s in all").save()
