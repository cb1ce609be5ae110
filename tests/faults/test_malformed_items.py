"""Scenario 13: items another tool wrote wrong, and writes DynamoDB refuses. Each such item ends
`failed` with the reason; none is run as an empty command, marked done, or taken for an outage."""

from __future__ import annotations

import time

from pyanamo.model import Item, Subtask
from pyanamo.queue import TaskQueue
from pyanamo.schema import ITEM_LIMIT_BYTES, Attr, ItemState

from faultkit import Analysis, Figures, executions, measured
from helpers import put_items


def padded(row: dict, pad: int) -> dict:
    return {**row, "Padding": {"S": "p" * pad}}


def near_the_limit(client, table: str, item_id: str, room: int) -> dict:
    """A row padded so that only about ``room`` bytes are left under the server's item size limit:
    enough for the claim (about 150 bytes), not for the result of its sub-task (several hundred).
    The limit is found by trying (DynamoDB allows 409,600 bytes; moto 405,000)."""
    row = raw(item_id, TaskScript={"M": {"Task_0": {"M": {
        "Script": {"S": "head -c 300 /dev/zero | tr '\\0' x; echo ran >> ran"}, "Status": {"S": "todo"}}}}})
    fits, too_big = 0, ITEM_LIMIT_BYTES
    while too_big - fits > 1:
        pad = (fits + too_big) // 2
        try:
            client.put_item(TableName=table, Item=padded(row, pad))
            fits = pad
        except client.exceptions.ClientError:
            too_big = pad
    return padded(row, fits - room)


def raw(item_id: str, **overrides) -> dict:
    """A well-formed todo row, with some attributes replaced by raw DynamoDB values."""
    row = Item(item_id, "T", (Subtask("Task_0", f"echo {item_id} >> ran"),)).new_row()
    row.update(overrides)
    return row


def test_malformed_items_fail_with_the_reason(aws_env, client, table, tmp_path, workers):
    script = {"Script": {"S": "echo ran >> ran"}}
    rows = {
        "unknown-status": raw("unknown-status",
                              TaskScript={"M": {"Task_0": {"M": {**script, "Status": {"S": "paused"}}}}}),
        "script-not-a-map": raw("script-not-a-map", TaskScript={"S": "echo not a map >> ran"}),
        "no-script": raw("no-script", TaskScript={"M": {"Task_0": {"M": {"Status": {"S": "todo"}}}}}),
        "no-subtasks": raw("no-subtasks", TaskScript={"M": {}}),
        "unknown-state": raw("unknown-state", lockID={"S": "paused"}),
    }
    rows["too-large"] = near_the_limit(client, table, "too-large", room=400)
    for row in rows.values():
        client.put_item(TableName=table, Item=row)
    put_items(client, table, [Item("good", "T", (Subtask("Task_0", "echo good >> ran"),))])
    started = time.monotonic()
    worker = workers.start(table, "--lease", "10")
    assert worker.wait(timeout=60) == 3  # drained; some items failed
    elapsed = time.monotonic() - started
    queue = TaskQueue(client, table)
    assert queue.get("good").state is ItemState.DONE
    expected = {
        "unknown-status": "malformed item: sub-task Task_0 has an unknown Status 'paused'",
        "script-not-a-map": "malformed item: TaskScript is not a map of sub-tasks",
        "no-script": "malformed item: sub-task Task_0 has no Script",
        "no-subtasks": "malformed item: TaskScript has no sub-tasks",
        "unknown-state": "malformed item: unknown lockID 'paused'",
    }
    for item_id, error in expected.items():
        stored = client.get_item(TableName=table, Key={Attr.ITEM_ID: {"S": item_id}})["Item"]
        assert stored[Attr.STATE]["S"] == "failed", item_id
        assert stored[Attr.LAST_ERROR]["S"] == error, item_id
        assert Attr.LEASE_TOKEN not in stored
    rejected = client.get_item(TableName=table, Key={Attr.ITEM_ID: {"S": "too-large"}})["Item"]
    assert rejected[Attr.STATE]["S"] == "failed"
    assert rejected[Attr.LAST_ERROR]["S"].startswith("item write rejected by DynamoDB: Item size"), rejected
    assert sorted((tmp_path / "ran").read_text().split()) == ["good", "ran"]  # nothing else ran
    log = worker.log_path.read_text()
    assert '"queue_error"' not in log and "queue_unreachable" not in log
    Figures("13. malformed items", runs=1, items=len(rows) + 1, subtasks=len(rows) + 1,
            faults="items with an unknown Status or lockID, TaskScript not a map, no Script, no sub-tasks; "
                   "one at DynamoDB's size limit whose result write is rejected (ValidationException)",
            **measured(queue, {"good": ItemState.DONE, **{i: ItemState.FAILED for i in rows}},
                       Analysis(executions(workers.processes))),
            recovery=f"each failed with its reason, none run as written wrong, no outage reported; "
                     f"{elapsed:.1f} s in all").save()
