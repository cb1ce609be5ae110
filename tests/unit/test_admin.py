"""`reset` selection and safety against the in-memory queue."""

from __future__ import annotations

import pytest

from pyanamo.admin import ResetFilter, cancel, reset
from pyanamo.errors import UsageError
from pyanamo.gateway import SubtaskResult
from pyanamo.runs import RunRecord
from pyanamo.schema import ItemState, SubtaskStatus

from fakes import InMemoryQueue, item, put


def table(queue: InMemoryQueue | None = None) -> InMemoryQueue:
    """todo: t1; failed: f1 (Task_1 failed); locked live: l1."""
    queue = queue or InMemoryQueue(owner="w", lease_seconds=600)
    put(queue, item("f1", "echo ok", "exit 7"), item("l1", "sleep 1"), item("t1"))  # claimed in this order
    for _ in range(3):
        got, lease = queue.claim()
        if got.item_id == "f1":
            queue.record(lease, SubtaskResult("Task_0", SubtaskStatus.DONE, 1, 0, {}, RunRecord()))
            queue.record(lease, SubtaskResult("Task_1", SubtaskStatus.FAILED, 2, 7, {}, RunRecord(), "Task_1: boom"),
                         final=ItemState.FAILED)
        elif got.item_id == "t1":
            queue.release(lease, ["Task_0"])
    return queue


def test_an_empty_selection_is_refused():
    with pytest.raises(UsageError, match="say which items to reset"):
        reset(table(), ResetFilter())


def test_reset_by_state_with_subtasks_requeues_failed_work_and_clears_attempts():
    queue = table()
    actions = reset(queue, ResetFilter(state=ItemState.FAILED, subtasks=True))
    assert [a.message for a in actions] == ["reset f1: failed -> todo (sub-tasks Task_1)"]
    f1 = queue.get("f1")
    assert f1.state is ItemState.TODO and f1.last_error is None
    assert [(s.status, s.attempts) for s in f1.subtasks][1] == (SubtaskStatus.TODO, 0)


def test_a_live_item_is_skipped_unless_named_then_revoked():
    queue = table()
    skipped = reset(queue, ResetFilter(state=ItemState.LOCKED))
    assert [a.changed for a in skipped] == [False] and "lease held by w is live" in skipped[0].message
    named = reset(queue, ResetFilter(item_ids=("l1",)))
    assert named[0].changed and named[0].message.startswith("revoked l1 from w")
    l1 = queue.get("l1")
    assert l1.state is ItemState.LOCKED and l1.lease_token.startswith("revoked-")


def test_a_reset_that_would_run_nothing_is_refused_and_says_how():
    queue = table()
    failed = reset(queue, ResetFilter(state=ItemState.FAILED))
    assert [a.message for a in failed] == [
        "f1: skipped, its failed sub-tasks (Task_1) have no attempts left; add --subtasks to run them again"]
    assert queue.get("f1").state is ItemState.FAILED
    only_done = InMemoryQueue(owner="w")
    put(only_done, item("d1"))
    _, lease = only_done.claim()
    only_done.finish(lease, ItemState.DONE)
    done = reset(only_done, ResetFilter(item_ids=("d1",), subtasks=True))
    assert not done[0].changed and "nothing would run again" in done[0].message
    assert only_done.get("d1").state is ItemState.DONE


def test_dry_run_changes_nothing_and_unknown_ids_are_reported():
    queue = table()
    actions = reset(queue, ResetFilter(item_ids=("f1", "nope"), subtasks=True), dry_run=True)
    assert [a.message for a in actions] == ["would reset f1: failed -> todo (sub-tasks Task_1)", "nope: no such item"]
    assert queue.get("f1").state is ItemState.FAILED


def finished_table() -> InMemoryQueue:
    """done: d1 and d2 (task S, by instance w); failed: f1 (see table()); locked live: l1; todo: t1."""
    queue = InMemoryQueue(owner="w", lease_seconds=600)
    put(queue, item("d1", "echo 1", "echo 2", task_id="S"), item("d2", task_id="S"))
    for _ in range(2):
        _, lease = queue.claim()
        queue.finish(lease, ItemState.DONE)
    return table(queue)


def test_rerun_runs_done_items_again_by_task_or_instance_and_keeps_the_earlier_run():
    queue = finished_table()
    actions = reset(queue, ResetFilter(task_id="S", rerun=True))
    assert sorted(a.message for a in actions) == [
        "rerun d1: done -> todo, all 2 sub-tasks from the first (the earlier run's record is kept)",
        "rerun d2: done -> todo, all 1 sub-tasks from the first (the earlier run's record is kept)",
    ]
    d1 = queue.get("d1")
    assert d1.state is ItemState.TODO and len(d1.earlier_runs) == 1 and d1.earlier_runs[0]["State"] == "done"
    queue = finished_table()
    by_instance = reset(queue, ResetFilter(instance_id="w", rerun=True), dry_run=True)
    assert sorted(a.item_id for a in by_instance if a.changed) == ["d1", "d2"]  # what w finished, not l1
    assert queue.get("d1").state is ItemState.DONE  # a dry run


def test_rerun_leaves_running_and_todo_items_alone_and_says_why():
    queue = finished_table()
    actions = reset(queue, ResetFilter(item_ids=("l1", "t1", "f1"), rerun=True))
    assert [a.message.split(":", 1)[1].strip() for a in actions] == [
        "skipped, locked (a worker holds it)",
        "already todo",
        "failed -> todo, all 2 sub-tasks from the first (the earlier run's record is kept)",
    ]


def test_cancel_stops_queued_running_and_failed_items_but_not_done_ones():
    queue = finished_table()
    plan = cancel(queue, ResetFilter(item_ids=("t1", "l1", "f1", "d1", "nope")), dry_run=True)
    assert [a.message for a in plan] == [
        "would cancel t1: todo -> cancelled",
        "would cancel l1: locked -> cancelled; its worker on w stops it within seconds",
        "would cancel f1: failed -> cancelled",
        "d1: skipped, already done",
        "nope: no such item",
    ]
    assert queue.get("t1").state is ItemState.TODO
    done = cancel(queue, ResetFilter(state=ItemState.TODO))
    assert [a.message for a in done] == ["cancelled t1: todo -> cancelled"]
    assert queue.get("t1").state is ItemState.CANCELLED and queue.claim() is None
    again = cancel(queue, ResetFilter(item_ids=("t1",)))
    assert again[0].message == "t1: skipped, already cancelled"
    back = reset(queue, ResetFilter(state=ItemState.CANCELLED))
    assert [a.message for a in back] == ["reset t1: cancelled -> todo"]


def test_cancel_with_an_empty_selection_is_refused():
    with pytest.raises(UsageError, match="say which items to cancel"):
        cancel(table(), ResetFilter())
