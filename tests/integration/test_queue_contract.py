"""One contract, two queues: the real ``TaskQueue`` on moto's server and the in-memory fake the
unit tests use (``tests/fakes.py``). Whatever the fake lets a unit test conclude holds for the
real queue too."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from pyanamo.gateway import LeaseLost, SubtaskResult, crashes
from pyanamo.ports import ItemAdmin, WorkQueue
from pyanamo.queue import TaskQueue
from pyanamo.runs import RunRecord
from pyanamo.schema import Attr, ItemState, SubtaskStatus

from fakes import InMemoryQueue, item

EXPIRED = 0.3  # seconds to wait for a 0.2 s lease to run out


@dataclass
class Table:
    """Queues on one table, as different workers see it."""

    queue: Callable[..., Any]
    abandoned: Callable[[str], tuple[int, str | None]]

    def put(self, *items) -> None:
        first = self.queue("importer")
        for it in items:
            assert first.put_new(it)


@pytest.fixture
def table_of(request, aws_env, store: str) -> Table:
    """``store``: "dynamodb" (the engine under test) or "memory" (the fake, once: see
    ``conftest.pytest_generate_tests``)."""
    if store == "memory":
        shared = InMemoryQueue()
        return Table(lambda owner, **kw: shared.sharing(owner=owner, **kw), shared.abandoned)
    client, table = request.getfixturevalue("client"), request.getfixturevalue("table")

    def abandoned(item_id: str) -> tuple[int, str | None]:
        """The crash count (what --max-claims counts) and the last holder."""
        row = client.get_item(TableName=table, Key={Attr.ITEM_ID: {"S": item_id}})["Item"]
        return crashes(row), row.get(Attr.LAST_HOLDER, {}).get("S")

    return Table(lambda owner, **kw: TaskQueue(client, table, owner=owner, **kw), abandoned)


def test_both_queues_offer_what_the_worker_and_the_admin_commands_use(table_of):
    queue = table_of.queue("w")
    assert isinstance(queue, WorkQueue) and isinstance(queue, ItemAdmin)


def done(key: str) -> SubtaskResult:
    return SubtaskResult(key, SubtaskStatus.DONE, 1, 0, {"stdout": "ok\n", "stderr": ""}, RunRecord(exit_code=0))


def test_a_claim_locks_the_item_marks_its_first_subtask_and_is_exclusive(table_of):
    table_of.put(item("a", "echo 1", "echo 2"))
    first = table_of.queue("w1", lease_seconds=30)
    got, lease = first.claim()
    assert got.state is ItemState.LOCKED and got.instance_id == "w1" and got.lease_token == lease.token
    assert [s.status for s in got.subtasks] == [SubtaskStatus.RUNNING, SubtaskStatus.TODO]
    assert table_of.queue("w2", lease_seconds=30).claim() is None
    assert first.any_in_state(ItemState.LOCKED) and not first.any_in_state(ItemState.TODO)


def test_a_reclaimed_item_fences_out_its_old_holder_and_counts_the_abandoned_claim(table_of):
    table_of.put(item("a", "echo 1", "echo 2"))
    old = table_of.queue("old", lease_seconds=0.2)
    _, old_lease = old.claim()
    old.record(old_lease, done("Task_0"), next_running="Task_1")
    time.sleep(EXPIRED)
    new = table_of.queue("new", lease_seconds=30)
    got, _ = new.claim()
    assert got.instance_id == "new" and got.subtasks[0].status is SubtaskStatus.DONE
    assert table_of.abandoned("a") == (1, "old")
    for write in (lambda: old.renew(old_lease), lambda: old.mark_running(old_lease, ["Task_1"]),
                  lambda: old.record(old_lease, done("Task_1")),
                  lambda: old.finish(old_lease, ItemState.DONE), lambda: old.release(old_lease, ["Task_1"])):
        with pytest.raises(LeaseLost):
            write()


def test_after_max_claims_abandoned_the_item_fails_naming_the_last_holder(table_of):
    table_of.put(item("a"))
    for n in range(3):
        assert table_of.queue(f"w{n}", lease_seconds=0.2, max_claims=3).claim() is not None
        time.sleep(EXPIRED)
    last = table_of.queue("w3", lease_seconds=30, max_claims=3)
    assert last.claim() is None and last.failed_on_claim == 1
    failed = last.get("a")
    assert failed.state is ItemState.FAILED and failed.lease_token is None
    assert failed.last_error.startswith("abandoned by 3 workers (last: w2)")


def test_a_holder_that_comes_back_after_losing_its_lease_is_no_crash(table_of):
    """Three pauses longer than the lease (a laptop asleep, a paused VM) fail no healthy item:
    each holder says it came back, before or after its item was reclaimed."""
    table_of.put(item("a"))
    holder = table_of.queue("w0", lease_seconds=0.2, max_claims=2)
    _, lease = holder.claim()
    for n in range(1, 4):
        time.sleep(EXPIRED)
        if n % 2:
            holder.came_back(lease)  # before the reclaim
        nxt = table_of.queue(f"w{n}", lease_seconds=0.2, max_claims=2)
        got = nxt.claim()
        assert got is not None, f"reclaim {n} failed the item: {nxt.get('a').last_error}"
        if not n % 2:
            holder.came_back(lease)  # after it
        holder, lease = nxt, got[1]
    assert table_of.abandoned("a")[0] == 0
    time.sleep(EXPIRED)  # this holder never comes back: a crash, counted
    assert table_of.queue("w4", lease_seconds=30, max_claims=2).claim() is not None
    assert table_of.abandoned("a") == (1, "w3")


def test_a_release_is_not_an_abandoned_claim_and_keeps_done_subtasks(table_of):
    table_of.put(item("a", "echo 1", "echo 2"))
    q = table_of.queue("w", lease_seconds=30, max_claims=1)
    _, lease = q.claim()
    q.record(lease, done("Task_0"))
    q.release(lease, ["Task_1"])
    got, _ = q.claim()
    assert [s.status for s in got.subtasks] == [SubtaskStatus.DONE, SubtaskStatus.TODO]
    assert table_of.abandoned("a")[0] == 0


def test_a_revocation_is_not_counted_and_a_reset_restarts_the_count(table_of):
    table_of.put(item("a"))
    table_of.queue("dead", lease_seconds=0.2).claim()
    time.sleep(EXPIRED)
    holder = table_of.queue("holder", lease_seconds=0.2)
    got, lease = holder.claim()
    assert table_of.abandoned("a")[0] == 1
    assert holder.revoke(got, [], clear_attempts=False)
    with pytest.raises(LeaseLost):
        holder.renew(lease)
    time.sleep(EXPIRED)
    got, _ = table_of.queue("after", lease_seconds=0.2).claim()
    assert table_of.abandoned("a")[0] == 1
    time.sleep(EXPIRED)
    expired = table_of.queue("admin").get("a")
    assert table_of.queue("admin").reset(expired, ["Task_0"], clear_attempts=True)
    assert table_of.abandoned("a")[0] == 0 and table_of.queue("admin").get("a").state is ItemState.TODO


def test_a_reset_or_revocation_of_an_item_that_changed_meanwhile_does_nothing(table_of):
    table_of.put(item("a"))
    q = table_of.queue("w", lease_seconds=30)
    stale = q.get("a")
    q.claim()
    assert not q.reset(stale, [], clear_attempts=False)
    assert not q.revoke(stale, [], clear_attempts=False)
    assert q.get("a").state is ItemState.LOCKED


def test_an_admin_write_never_undoes_a_result_the_holder_wrote_after_the_read(table_of):
    """The race a (state, lease) check left open: `reset --subtasks` reads a locked item with
    Task_0 running, its holder then records Task_0 done under the same lease; the revocation
    must not set Task_0 back to todo. A renewal in between changes nothing of the item."""
    table_of.put(item("a", "echo 1", "echo 2"))
    holder = table_of.queue("w", lease_seconds=30)
    _, lease = holder.claim()
    admin = table_of.queue("admin")
    read = admin.get("a")
    lease = holder.renew(lease)
    assert admin.get("a").version == read.version  # a renewal is no change
    holder.record(lease, done("Task_0"), next_running="Task_1")
    assert not admin.revoke(read, ["Task_0"], clear_attempts=True)
    assert not admin.reset(read, ["Task_0"], clear_attempts=True)
    assert not admin.cancel(read)
    now = admin.get("a")
    assert now.subtasks[0].status is SubtaskStatus.DONE and now.lease_token == lease.token
    assert admin.revoke(now, ["Task_1"], clear_attempts=False)  # read afresh, it applies
    assert admin.get("a").version == now.version + 1


def test_imports_never_overwrite_and_replace_never_touches_a_held_item(table_of):
    q = table_of.queue("w", lease_seconds=30)
    assert q.put_new(item("a", "echo first"))
    assert not q.put_new(item("a", "echo second"))
    assert q.replace_unless_held(item("b", "echo new")) is False  # nothing to replace: written
    q.claim()
    q.claim()
    assert q.replace_unless_held(item("a", "echo third")) is None
    assert q.get("a").subtasks[0].script == "echo first"


def test_an_import_that_replaces_a_failed_item_keeps_its_run_in_earlier_runs(table_of):
    """A fixed script imported again must not make the failure it fixed vanish from the report."""
    table_of.put(item("a", "exit 3"))
    q = table_of.queue("w", lease_seconds=30)
    _, lease = q.claim()
    q.record(lease, SubtaskResult("Task_0", SubtaskStatus.FAILED, 1, 3, {"stdout": "", "stderr": "boom\n"},
                                  RunRecord(exit_code=3), "Task_0: boom"), final=ItemState.FAILED)
    assert q.replace_unless_held(item("a", "echo fixed")) is True
    fixed = q.get("a")
    assert fixed.state is ItemState.TODO and fixed.subtasks[0].script == "echo fixed"
    (earlier,) = fixed.earlier_runs
    assert earlier["State"] == "failed" and earlier["Subtasks"]["Task_0"]["Exit"] == 3
    assert q.replace_unless_held(item("a", "echo fixed again")) is True  # never ran: nothing more kept
    assert len(q.get("a").earlier_runs) == 1


def test_finishing_ends_the_item_and_clears_its_lease(table_of):
    table_of.put(item("ok", "echo 1"), item("bad", "echo 1", "exit 3"))
    q = table_of.queue("w", lease_seconds=30)
    for _ in range(2):
        got, lease = q.claim()
        if got.item_id == "ok":
            q.record(lease, done("Task_0"), final=ItemState.DONE)
        else:
            q.finish(lease, ItemState.FAILED, "Task_1: no attempts left", failed=["Task_1"])
    ok, bad = q.get("ok"), q.get("bad")
    assert ok.state is ItemState.DONE and ok.done_date and ok.lease_token is None
    assert bad.state is ItemState.FAILED and bad.subtasks[1].status is SubtaskStatus.FAILED
    assert bad.last_error == "Task_1: no attempts left" and bad.done_date is None
    assert q.any_in_state(ItemState.DONE) and q.any_in_state(ItemState.FAILED)
    assert not q.any_in_state(ItemState.LOCKED) and not q.any_in_state(ItemState.TODO)


def test_a_cancelled_item_is_claimed_by_no_one_and_its_holder_loses_the_lease(table_of):
    table_of.put(item("held", "echo 1", "echo 2"), item("queued"))
    holder = table_of.queue("holder", lease_seconds=30)
    got, lease = holder.claim()
    other = "queued" if got.item_id == "held" else "held"
    admin = table_of.queue("admin")
    assert admin.cancel(admin.get(got.item_id)) and admin.cancel(admin.get(other))
    with pytest.raises(LeaseLost):
        holder.renew(lease)
    assert table_of.queue("w2", lease_seconds=30).claim() is None
    cancelled = admin.get(got.item_id)
    assert cancelled.state is ItemState.CANCELLED and cancelled.lease_token is None
    assert SubtaskStatus.RUNNING not in [s.status for s in cancelled.subtasks]  # it did not finish
    assert admin.any_in_state(ItemState.CANCELLED) and not admin.any_in_state(ItemState.TODO)
    assert admin.reset(cancelled, [], clear_attempts=False)  # a reset brings it back
    assert admin.get(got.item_id).state is ItemState.TODO


def test_a_rerun_starts_a_done_item_from_its_first_subtask_and_keeps_the_earlier_run(table_of):
    table_of.put(item("a", "echo 1", "echo 2"))
    q = table_of.queue("w1", lease_seconds=30)
    for run in range(4):
        _, lease = q.claim()
        q.record(lease, done("Task_0"), next_running="Task_1")
        q.record(lease, done("Task_1"), final=ItemState.DONE)
        finished = q.get("a")
        assert finished.state is ItemState.DONE
        assert q.rerun(finished)
        again = q.get("a")
        assert again.state is ItemState.TODO and again.done_date is None and not again.logs
        assert [(s.status, s.attempts, s.exit_code) for s in again.subtasks] == [(SubtaskStatus.TODO, 0, None)] * 2
        assert len(again.earlier_runs) == min(run + 1, 3)  # the last three are kept
        last = again.earlier_runs[-1]
        assert last["State"] == "done" and last["InstanceID"] == "w1" and last["Ended"] == finished.done_date
        assert {k: v["Exit"] for k, v in last["Subtasks"].items()} == {"Task_0": 0, "Task_1": 0}
    assert not q.rerun(finished)  # stale: the item changed since it was read
