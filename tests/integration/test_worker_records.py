"""Worker records live in the task table but outside the queue: no claim, count, drain check,
backlog or reset ever sees them, and the report finds every one with a Query."""

from __future__ import annotations

import pytest

from pyanamo.admin import ResetFilter, cancel, reset
from pyanamo.errors import ConditionFailed
from pyanamo.queue import TaskQueue
from pyanamo.scaler import count_backlog
from pyanamo.schema import ItemState
from pyanamo.status import gather

from fakes import item
from helpers import put_items

RECORD = {"Record_Type": "worker", "Worker_ID": "h:1", "InstanceID": "i-0abc", "Host": "h",
          "Instance_Type": "m7i.large", "Lifecycle": "spot", "Zone": "us-east-1a", "Price_Per_Hour": 0.1,
          "Price_Source": "spot-price-history", "Slots": 2, "Started": "2027-01-01T00:00:00.000Z",
          "Last_Seen": "2027-01-01T00:30:00.000Z", "Items_Done": 0, "Items_Failed": 0, "Busy_Seconds": 0}


def test_worker_records_are_invisible_to_the_queue_and_found_by_the_report(client, table):
    queue = TaskQueue(client, table, owner="w", lease_seconds=30)
    for n in range(3):
        queue.put_worker_record(f"pyanamo-worker#h:{n}#0", {**RECORD, "Worker_ID": f"h:{n}"})
    queue.update_worker_record("pyanamo-worker#h:0#0",
                               {"Ended": "2027-01-01T01:00:00.000Z", "Exit_Reason": "drained"})
    assert queue.claim() is None
    assert not any(queue.any_in_state(state) for state in ItemState)
    assert count_backlog(client, table) == 0
    report = gather(queue)
    assert report.total == 0 and report.items_read == 0
    assert report.workers == 3 and report.instance_hours == 2.0 and report.cost_usd == 0.2  # 1 h + 2 × 0.5 h
    assert reset(queue, ResetFilter(instance_id="i-0abc")) == []
    assert reset(queue, ResetFilter(instance_id="i-0abc", rerun=True)) == []
    assert cancel(queue, ResetFilter(instance_id="i-0abc")) == []
    records = sorted(queue.worker_records(), key=lambda r: r["Worker_ID"])
    assert [r["Worker_ID"] for r in records] == ["h:0", "h:1", "h:2"]
    assert records[0]["Exit_Reason"] == "drained" and "lockID" not in records[0]


def test_an_update_never_creates_a_record_and_items_sit_beside_records(client, table):
    queue = TaskQueue(client, table, owner="w", lease_seconds=30)
    put_items(client, table, [item("a", "true")])
    queue.put_worker_record("pyanamo-worker#h:1#0", RECORD)
    got, _ = queue.claim()
    assert got.item_id == "a" and queue.claim() is None
    with pytest.raises(ConditionFailed):
        queue.update_worker_record("pyanamo-worker#gone#0", {"Last_Seen": "x"})
