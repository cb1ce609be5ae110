"""Scenario 13: items another tool wrote wrong, and writes DynamoDB refuses. Each such item ends
`failed` with the reason; none is run as an empty command, marked done, or taken for an outage."""

from __future__ import annotations

import time

from pyanamo.model import Item, Subtask
from pyanamo.queue import TaskQueue
from pyanamo.schema import ITEM_LIMIT_BYTES, Attr, ItemState, state_shard

from faultkit import Analysis, Figures, executions, measured
from helpers import cli, put_items


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


def done_row(item_id: str, **overrides) -> dict:
    """A finished item as a worker leaves it, with some attributes replaced by raw values."""
    row = in_state(raw(item_id, TaskScript={"M": {"Task_0": {"M": {
        "Script": {"S": "true"}, "Status": {"S": "done"}, "Attempts": {"N": "1"}, "ExitCode": {"N": "0"}}}}}),
        ItemState.DONE)
    row.update(overrides)
    return row


def in_state(row: dict, state: ItemState) -> dict:
    """The row with the state and the index keys an item in ``state`` has."""
    item_id = row[Attr.ITEM_ID]["S"]
    return {**row, Attr.STATE: {"S": state.value}, Attr.STATE_SHARD: {"S": state_shard(state, item_id)},
            Attr.STATE_RANK: {"S": "2026-12-03T00:00:00.000Z"}}


def test_malformed_stored_records_never_crash_a_worker_or_a_command(aws_env, client, table, tmp_path, workers):
    """Scenario 28: wrong-typed fields in run records, counters and logs, and an unreadable lease.
    Before, an `ExitCode` stored as text crashed 3 of 4 workers that claimed its item, status and
    report showed tracebacks, and `reset --state failed` stopped at the first malformed item after
    resetting others without saying so."""
    bad_record = {"M": {"ExitCode": {"S": "oops"}, "Earlier_Exits": {"L": [{"S": "x"}, {"N": "2"}]},
                        "CPU_Time": {"S": "fast"}, "Started": {"N": "5"}, "Wall_Time": {"BOOL": True},
                        "Peak_RSS_KB": {"S": "big"}, "Attempt": {"S": "one"}}}
    rows = [
        # a retry of a sub-task whose stored record is garbage: the worker must run it
        raw("retry", TaskScript={"M": {"Task_0": {"M": {"Script": {"S": "echo retry >> ran"},
                                                         "Status": {"S": "todo"}, "Attempts": {"N": "1"},
                                                         "ExitCode": {"N": "1"}}}}},
            Log_Summary={"M": {"Task_0": bad_record}}),
        done_row("done-bad-record", Log_Summary={"M": {"Task_0": bad_record}},
                 Log={"M": {"Task_0": {"S": "not a map"}}}, Earlier_Runs={"S": "not a list"}),
        done_row("done-bad-counts", Subtask_Count={"S": "x"}, Subtasks_Done={"S": "many"},
                 Log_Summary={"M": {"Task_0": {"S": "not a map"}}}),
        in_state(raw("failed-bad-lease", Lease_Token={"N": "5"}), ItemState.FAILED),
        in_state(raw("failed-fine", Last_Error={"N": "7"}), ItemState.FAILED),
    ]
    for row in rows:
        client.put_item(TableName=table, Item=row)
    worker = workers.start(table, "--lease", "10")
    assert worker.wait(timeout=60) == 0
    log = worker.log_path.read_text()
    assert "Traceback" not in log
    queue = TaskQueue(client, table)
    assert queue.get("retry").state is ItemState.DONE
    assert (tmp_path / "ran").read_text() == "retry\n"

    shown = {
        "status": cli("status", table, env=aws_env),
        "status --json": cli("status", table, "--json", env=aws_env),
        "report --json": cli("report", table, "--json", env=aws_env),
        "report --html": cli("report", table, "--html", str(tmp_path / "r.html"), "--trace",
                             str(tmp_path / "trace.tsv"), env=aws_env),
        "ps": cli("ps", table, env=aws_env),
        **{f"logs {i}": cli("logs", table, i, env=aws_env) for i in ("retry", "done-bad-record", "done-bad-counts")},
    }
    for name, proc in shown.items():
        assert "Traceback" not in proc.stderr + proc.stdout, name
        assert proc.returncode in (0, 3), (name, proc.stderr)
    assert "(malformed record: Log_Summary.Task_0.ExitCode is not a number)" in shown["logs done-bad-record"].stdout
    assert "(malformed record: Log_Summary.Task_0 is not a map)" in shown["logs done-bad-counts"].stdout

    reset = cli("reset", table, "--state", "failed", env=aws_env)
    assert reset.returncode == 1, reset.stderr
    assert "failed-bad-lease: skipped, malformed: Lease_Token is not text" in reset.stdout
    assert "reset 1 items" in reset.stdout and queue.get("failed-fine").state is ItemState.TODO
    Figures("28. malformed stored records", runs=1, items=len(rows), subtasks=len(rows), lost=0, overlaps=0,
            duplicates=0, why={},
            faults="ExitCode, Earlier_Exits, CPU_Time, Started, Wall_Time, Peak_RSS_KB, Attempt of a run record "
                   "of the wrong type; counters as text; a log that is not a map; a lease token that is a number",
            recovery="0 worker crashes; the item with the bad record ran and is done; status, report, ps and "
                     "logs name the malformed attributes without a traceback; reset skips the unreadable item, "
                     "names it, resets the rest and exits 1").save()


def test_items_whose_index_keys_disagree_with_their_state_are_repaired(aws_env, client, table, tmp_path, workers):
    """Scenario 29: an item indexed under another state than its own, one missing from the index,
    and a lock without a lease. Before, the first two never ran and the last kept the queue from
    draining; `repair` finds all three (dry run first), workers heal the ones they meet."""
    put_items(client, table, [Item(i, "T", (Subtask("Task_0", f"echo {i} >> ran"),))
                              for i in ("wrong-shard", "no-shard", "no-lease", "fine")])

    def edit(item_id: str, expression: str, **values) -> None:
        extra = {"ExpressionAttributeValues": {f":{k}": {"S": v} for k, v in values.items()}} if values else {}
        client.update_item(TableName=table, Key={Attr.ITEM_ID: {"S": item_id}}, UpdateExpression=expression,
                           **extra)

    edit("wrong-shard", "SET State_Shard = :s", s=state_shard(ItemState.DONE, "wrong-shard"))
    edit("no-shard", "REMOVE State_Shard, State_Rank")
    edit("no-lease", "SET lockID = :l, State_Shard = :s, State_Rank = :r", l="locked",
         s=state_shard(ItemState.LOCKED, "no-lease"), r="000000000000001")
    status = cli("status", table, env={**aws_env, "COLUMNS": "200"})
    assert f"1 locked items have no lease and can never be reclaimed: pyanamo repair {table} --apply" in status.stdout

    dry = cli("repair", table, env=aws_env)
    assert dry.returncode == 1, dry.stderr
    *problems, summary = dry.stdout.splitlines()
    assert sorted(problems) == [  # in the Scan's order
        "no-lease: locked without a lease (no Lease_Token or Lease_Expiry)",
        "no-shard: missing from the state index (no State_Shard or State_Rank)",
        f"wrong-shard: lockID is todo but it is indexed as done ({state_shard(ItemState.DONE, 'wrong-shard')})",
    ]
    assert summary == "3 items need repair: run again with --apply to fix them"
    applied = cli("repair", table, "--apply", env=aws_env)
    assert applied.returncode == 0 and applied.stdout.splitlines()[-1] == "repaired 3 of 3 items"
    assert workers.start(table, "--lease", "10").wait(timeout=60) == 0
    assert sorted((tmp_path / "ran").read_text().split()) == ["fine", "no-lease", "no-shard", "wrong-shard"]
    again = cli("repair", table, env=aws_env)
    assert again.returncode == 0 and "every item's index keys agree with its state" in again.stdout
    Figures("29. index keys that disagree with the state", runs=1, items=4, subtasks=4, lost=0, overlaps=0,
            duplicates=0, why={},
            faults="an item indexed as done while todo, one missing from the index, a lock without a lease",
            recovery="status names the lock without a lease; repair lists all 3 (dry run, exit 1), fixes "
                     "them with --apply; every item then ran once").save()


def test_a_worker_reindexes_a_finished_item_left_in_the_todo_index_and_drains(aws_env, client, table, workers):
    """Before, such an item was a todo candidate that no claim could take: the queue never drained."""
    put_items(client, table, [Item("stale", "T", (Subtask("Task_0", "true"),))])
    client.update_item(TableName=table, Key={Attr.ITEM_ID: {"S": "stale"}}, UpdateExpression="SET lockID = :d",
                       ExpressionAttributeValues={":d": {"S": "done"}})
    worker = workers.start(table, "--lease", "10", "--linger", "1")
    assert worker.wait(timeout=60) == 0
    row = client.get_item(TableName=table, Key={Attr.ITEM_ID: {"S": "stale"}})["Item"]
    assert row[Attr.STATE_SHARD]["S"] == state_shard(ItemState.DONE, "stale")
    assert '"index_repaired"' in worker.log_path.read_text()
