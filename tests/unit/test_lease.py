"""Lease keeping against the in-memory queue: renewals, a revoked lease, an unreachable table."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

from pyanamo.errors import Unreachable
from pyanamo.lease import LeaseKeeper
from pyanamo.schema import ItemState

from fakes import InMemoryQueue, item, put
from helpers import wait_for


class Process:
    """Stands in for a running sub-task: records how it was interrupted."""

    def __init__(self) -> None:
        self.interrupts: list[tuple[str, float | None]] = []
        self.deadlines: list[float] = []

    def interrupt(self, reason: str, grace: float | None = None) -> None:
        self.interrupts.append((reason, grace))

    def extend(self, seconds: float) -> None:
        self.deadlines.append(seconds)


def held_item(lease_seconds: float):
    queue = InMemoryQueue(owner="w", lease_seconds=lease_seconds)
    put(queue, item("a"))
    _, lease = queue.claim()
    keeper = LeaseKeeper(queue, lease_seconds)
    held = keeper.hold(lease)
    process = Process()
    held.track(process)  # type: ignore[arg-type]
    keeper.start()
    return queue, keeper, held, process


def test_renewals_keep_the_lease_alive():
    queue, keeper, held, process = held_item(0.6)
    first = held.lease.expiry
    time.sleep(1.0)
    keeper.stop()
    assert held.lease.expiry > first and not held.lost.is_set() and process.interrupts == []
    # each renewal moves the supervisor's deadline to the watchdog's point: 3/4 of the lease
    assert process.deadlines and all(0.3 < d <= 0.45 for d in process.deadlines), process.deadlines
    assert queue.get("a").lease_expiry >= round(first, 3)


def test_a_revoked_lease_stops_the_items_processes_at_once():
    queue, keeper, held, process = held_item(0.6)
    assert queue.revoke(queue.get("a"), [], clear_attempts=False)
    wait_for(held.lost.is_set, timeout=5, message="the item abandoned")
    keeper.stop()
    assert process.interrupts == [("lease_lost", 0)]


def test_without_the_table_the_watchdog_stops_the_processes_before_the_lease_runs_out():
    queue, keeper, held, process = held_item(0.8)
    queue.outage = Unreachable("connection refused")
    expiry = held.lease.expiry
    wait_for(held.lost.is_set, timeout=5, message="the watchdog giving up")
    keeper.stop()
    assert time.time() < expiry and process.interrupts == [("lease_lost", 0)]


def test_an_item_whose_last_write_is_done_is_not_renewed():
    queue, keeper, held, process = held_item(0.6)
    with held.write_lock:
        queue.finish(held.lease, ItemState.DONE)
        held.closed = True
    time.sleep(0.5)
    keeper.stop()
    assert not held.lost.is_set() and process.interrupts == []


def test_a_lease_past_the_watchdogs_line_is_given_up_by_the_renewer_too():
    """After a pause longer than the lease, the renewer may wake before the watchdog: it gives
    the item up as the watchdog would (its supervisors are killing the sub-tasks) rather than
    renewing it, so which thread wakes first never decides whether the claim is abandoned."""
    queue = InMemoryQueue(owner="w", lease_seconds=30)
    put(queue, item("a"))
    _, lease = queue.claim()
    keeper = LeaseKeeper(queue, 0.6)  # renews every 0.2 s; gives up 0.15 s before expiry
    held = keeper.hold(replace(lease, expiry=queue.now() + 0.1))  # as a worker finds it on waking
    process = Process()
    held.track(process)  # type: ignore[arg-type]
    renewer = threading.Thread(target=keeper._renew_loop, daemon=True)  # the renewer alone, no watchdog
    renewer.start()
    wait_for(held.lost.is_set, timeout=5, message="the renewer giving the item up")
    keeper.stop()
    renewer.join()
    assert process.interrupts == [("lease_lost", 0)]
    assert queue.get("a").lease_expiry == round(lease.expiry, 3)  # never renewed


def test_an_item_finishing_while_the_cancel_check_looks_is_not_taken_for_cancelled(monkeypatch):
    """The cancel check lists the items held here; one whose final write is under way has left
    that list (it is done) but is no cancelled item. Before, the check read it as no longer ours
    and logged it abandoned ('cancelled') just before the worker logged it done."""
    monkeypatch.setattr("pyanamo.lease.CANCEL_CHECK_SECONDS", 0.05)
    queue = InMemoryQueue(owner="w", lease_seconds=30)
    put(queue, item("a"))
    put(queue, item("b"))
    _, lease = queue.claim()
    _, other = queue.claim()
    keeper = LeaseKeeper(queue, 30)
    held = keeper.hold(lease)
    keeper.hold(other)  # still running: the checks go on
    checks = threading.Semaphore(0)
    listed = queue.held_here

    def held_here() -> set[str]:
        found = listed()
        checks.release()
        return found

    monkeypatch.setattr(queue, "held_here", held_here)
    keeper.start()
    with held.write_lock:  # the worker's final write, as `Worker._write` makes it
        queue.finish(held.lease, ItemState.DONE)
        assert checks.acquire(timeout=5)  # a check lists the held items now, without this one
        held.closed = True
    for _ in range(3):  # three more checks: none takes the finished item for a cancelled one
        assert checks.acquire(timeout=5)
    keeper.stop()
    assert not held.lost.is_set()
