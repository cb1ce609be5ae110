"""Keeping leases alive while sub-tasks run, and giving up safely when that fails.

Two threads per worker: the renewer extends every held lease each third of the lease time
(a renewal may block on a slow endpoint); the watchdog, which never talks to DynamoDB, kills
an item's processes at once if its lease is about to expire unrenewed. So a worker cut off from
the table stops its sub-tasks before another worker may reclaim the item: no two runs overlap.
A third guard sits outside the worker: each sub-task's supervisor holds the same deadline on its
own monotonic clock, moved on by each renewal, and kills the sub-task when it passes, so a
worker that is paused or hung (its threads cannot run) cannot leave a sub-task running either.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from .errors import QueueError
from .events import emit
from .gateway import Lease, LeaseLost
from .launcher import RunningSubtask
from .ports import WorkQueue


class HeldItem:
    """An item this worker holds: its lease and the processes running for it."""

    def __init__(self, lease: Lease) -> None:
        self.lease = lease
        self.lost = threading.Event()
        # Held while writing: the renewer never renews an item whose last write (finish,
        # release) is done, which would fail and read as a lost lease.
        self.write_lock = threading.Lock()
        self.closed = False
        self._processes: set[RunningSubtask] = set()
        self._lock = threading.Lock()

    @property
    def item_id(self) -> str:
        return self.lease.item_id

    def track(self, process: RunningSubtask) -> None:
        with self._lock:
            self._processes.add(process)
        if self.lost.is_set():
            process.interrupt("lease_lost", grace=0)

    def untrack(self, process: RunningSubtask) -> None:
        with self._lock:
            self._processes.discard(process)

    def interrupt_all(self, reason: str, grace: float | None = None) -> None:
        with self._lock:
            processes = list(self._processes)
        for process in processes:
            process.interrupt(reason, grace=grace)

    def extend_all(self, seconds: float) -> None:
        """Move every running sub-task's own deadline (its supervisor's) after a renewal."""
        with self._lock:
            processes = list(self._processes)
        for process in processes:
            process.extend(seconds)

    def abandon(self, reason: str) -> None:
        """Stop everything for this item at once and never write to it again."""
        if not self.lost.is_set():
            self.lost.set()
            emit("item_abandoned", item=self.item_id, reason=reason)
        self.interrupt_all("lease_lost", grace=0)


CANCEL_CHECK_SECONDS = 2.0  # how often a worker looks for its items being cancelled


class LeaseKeeper:
    def __init__(self, queue: WorkQueue, lease_seconds: float) -> None:
        self.queue = queue
        self.renew_every = lease_seconds / 3
        # Give up this long before expiry: covers the kill itself and the uncertainty of the
        # endpoint's clock (``clock``: under a second once a few answers were seen).
        self.margin = lease_seconds / 4
        self._held: set[HeldItem] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._renew_loop, name="lease-renewer", daemon=True),
            threading.Thread(target=self._watch_loop, name="lease-watchdog", daemon=True),
            threading.Thread(target=self._cancel_loop, name="cancel-watcher", daemon=True),
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()

    def hold(self, lease: Lease) -> HeldItem:
        held = HeldItem(lease)
        with self._lock:
            self._held.add(held)
        return held

    def release(self, held: HeldItem) -> None:
        with self._lock:
            self._held.discard(held)

    def held(self) -> Iterable[HeldItem]:
        with self._lock:
            return list(self._held)

    def expiring(self, held: HeldItem) -> bool:
        return self.queue.now() >= held.lease.expiry - self.margin

    def deadline(self, held: HeldItem) -> float:
        """Seconds from now until a sub-task of ``held`` must be dead unless the lease is renewed:
        when the watchdog would give the item up, a quarter of the lease before it runs out.
        The supervisor keeps it on its own monotonic clock, so it holds while this worker is
        paused or hung; the margin covers the kill itself."""
        return max(0.001, held.lease.expiry - self.queue.now() - self.margin)

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.renew_every):
            for held in self.held():
                with held.write_lock:
                    if held.lost.is_set() or held.closed:
                        continue
                    if self.expiring(held):  # past the watchdog's line (a pause): its supervisors are
                        held.abandon("lease_expiring")  # killing the sub-tasks now, so give it up
                        continue  # as the watchdog would, whichever of the two threads wakes first
                    try:
                        held.lease = self.queue.renew(held.lease)
                        held.extend_all(self.deadline(held))
                    except LeaseLost:
                        held.abandon("lease_taken")
                    except QueueError as exc:  # outage or throttling: the watchdog decides
                        emit("lease_renew_failed", item=held.item_id, error=str(exc))

    def _cancel_loop(self) -> None:
        """Stop a cancelled item's sub-tasks within seconds, not at the next renewal (a third of
        the lease): every CANCEL_CHECK_SECONDS, one Query of the instance index lists the items
        this instance holds; a held item missing from it is read (consistently, since the index
        may lag a fresh claim) and abandoned if it is no longer ours. One request per worker per
        check, however many items it holds; a read only when the index disagrees."""
        while not self._stop.wait(CANCEL_CHECK_SECONDS):
            held = [h for h in self.held() if not h.lost.is_set() and not h.closed]
            if not held:
                continue
            try:
                listed = self.queue.held_here()
                for item in held:
                    if item.item_id in listed:
                        continue
                    with item.write_lock:  # not while its last write is under way: that one ends
                        if item.closed or item.lost.is_set():  # the item, and it leaves the index too
                            continue
                        if not self.queue.still_held(item.lease):
                            item.abandon("cancelled")
            except QueueError as exc:  # an outage: the renewer and the watchdog decide
                emit("cancel_check_failed", error=str(exc))

    def _watch_loop(self) -> None:
        tick = min(0.5, self.margin / 4)
        while not self._stop.wait(tick):
            for held in self.held():
                if not held.lost.is_set() and not held.closed and self.expiring(held):
                    held.abandon("lease_expiring")
