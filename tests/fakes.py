"""An in-memory stand-in for ``TaskQueue`` with an injectable clock, for unit tests of the worker,
the lease keeper and the admin commands (procrastinate's in-memory connector is the model).

It keeps the same rules as the real queue (claims, leases and fencing, abandoned-claim counting,
conditional imports, reset, revocation, re-runs and cancelling); ``tests/integration/test_queue_contract.py`` runs
one set of tests against both, so the two cannot drift apart.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from pyanamo.errors import QueueError
from pyanamo.gateway import Lease, LeaseLost, SubtaskResult
from pyanamo.model import Item, Subtask, to_dynamo, utc_now_iso
from pyanamo.queue import DEFAULT_MAX_CLAIMS, UNKNOWN_HOLDER
from pyanamo.schema import Attr, ItemState, SubtaskStatus


@dataclass
class _Row:
    stored: Item
    abandoned: int = 0
    abandoned_leases: set[str] = field(default_factory=set)
    returned_leases: set[str] = field(default_factory=set)
    last_holder: str | None = None
    claims: int = 0
    subtasks_done: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def item(self) -> Item:
        return self.stored

    @item.setter
    def item(self, changed: Item) -> None:
        """Every change but a renewal (which sets ``stored``) is a new version, as in TaskQueue."""
        self.stored = replace(changed, version=self.stored.version + 1)


def _crashes(row: _Row) -> int:
    return row.abandoned - len(row.abandoned_leases & row.returned_leases)


def _count_crashes_again(row: _Row) -> None:
    row.abandoned = 0
    row.abandoned_leases.clear()
    row.returned_leases.clear()


class InMemoryQueue:
    """The parts of ``TaskQueue`` that the worker, the lease keeper and ``admin`` use."""

    def __init__(self, *, owner: str = "", lease_seconds: float = 60, max_claims: int = DEFAULT_MAX_CLAIMS,
                 clock: Callable[[], float] = time.time, table: str = "memory",
                 rows: dict[str, _Row] | None = None, worker_id: str = "") -> None:
        self.table = table
        self.owner = owner
        self.worker_id = worker_id or owner
        self.lease_seconds = lease_seconds
        self.max_claims = max_claims
        self.clock = clock
        self.failed_on_claim = 0
        self.outage: QueueError | None = None  # set it to make every request fail so
        self._rows = rows if rows is not None else {}
        self.workers: dict[str, dict[str, Any]] = {}
        self._lock = threading.RLock()

    def now(self) -> float:
        return self.clock()

    def sharing(self, *, owner: str, lease_seconds: float | None = None, max_claims: int | None = None,
                ) -> InMemoryQueue:
        """Another worker's view of the same table."""
        return InMemoryQueue(owner=owner, lease_seconds=self.lease_seconds if lease_seconds is None else lease_seconds,
                             max_claims=self.max_claims if max_claims is None else max_claims,
                             clock=self.clock, table=self.table, rows=self._rows)

    def _request(self) -> None:
        if self.outage is not None:
            raise self.outage

    # -- claiming ---------------------------------------------------------------------------

    def claim(self) -> tuple[Item, Lease] | None:
        self._request()
        with self._lock:
            now = self.clock()
            for reclaim in (False, True):
                for item_id, row in list(self._rows.items()):
                    item = row.item
                    if reclaim and not (item.state is ItemState.LOCKED and (item.lease_expiry or 0) < now):
                        continue
                    if not reclaim and item.state is not ItemState.TODO:
                        continue
                    claimed = self._claim(item_id, row, now, reclaim)
                    if claimed is not None:
                        return claimed
            return None

    def expect_work(self) -> None:
        """The fake keeps no cache of empty shards: every claim looks at every item."""

    def _claim(self, item_id: str, row: _Row, now: float, reclaim: bool) -> tuple[Item, Lease] | None:
        lease = Lease(item_id, secrets.token_hex(16), now + self.lease_seconds)
        subtasks = row.item.subtasks
        if subtasks and subtasks[0].status is SubtaskStatus.TODO:
            subtasks = (replace(subtasks[0], status=SubtaskStatus.RUNNING), *subtasks[1:])
        if reclaim:
            row.abandoned += 1
            if row.item.lease_token is not None:
                row.abandoned_leases.add(row.item.lease_token)
            row.last_holder = row.item.instance_id or UNKNOWN_HOLDER
        row.claims += 1
        row.item = replace(row.item, state=ItemState.LOCKED, lease_token=lease.token,
                           lease_expiry=round(lease.expiry, 3), instance_id=self.owner, worker_id=self.worker_id,
                           lock_date=utc_now_iso(),
                           subtasks=subtasks)
        if reclaim and _crashes(row) >= self.max_claims:
            error = (f"abandoned by {_crashes(row)} workers (last: {row.last_holder}); "
                     f"a sub-task may be killing its worker (out of memory?)")
            self._end(row, ItemState.FAILED, error)
            self.failed_on_claim += 1
            return None
        return row.item, lease

    # -- writes under a lease -------------------------------------------------------------

    def _held(self, lease: Lease) -> _Row:
        self._request()
        row = self._rows.get(lease.item_id)
        if row is None or row.item.lease_token != lease.token:
            raise LeaseLost(lease.item_id)
        return row

    def held_here(self) -> set[str]:
        self._request()
        with self._lock:
            return {i for i, row in self._rows.items()
                    if row.item.state is ItemState.LOCKED and row.item.instance_id == self.owner}

    def still_held(self, lease: Lease) -> bool:
        self._request()
        with self._lock:
            row = self._rows.get(lease.item_id)
            return row is not None and row.item.state is ItemState.LOCKED and row.item.lease_token == lease.token

    def came_back(self, lease: Lease) -> None:
        self._request()
        with self._lock:
            row = self._rows.get(lease.item_id)
            if row is not None:
                row.returned_leases.add(lease.token)

    def renew(self, lease: Lease) -> Lease:
        with self._lock:
            row = self._held(lease)
            renewed = Lease(lease.item_id, lease.token, self.clock() + self.lease_seconds)
            row.stored = replace(row.item, lease_expiry=round(renewed.expiry, 3))
            return renewed

    def mark_running(self, lease: Lease, keys: list[str]) -> None:
        with self._lock:
            row = self._held(lease)
            row.item = _with_statuses(row.item, dict.fromkeys(keys, SubtaskStatus.RUNNING))

    def record(self, lease: Lease, result: SubtaskResult, *, final: ItemState | None = None,
               next_running: str | None = None, skipped: Sequence[str] = ()) -> frozenset[str]:
        with self._lock:
            row = self._held(lease)
            item = row.item
            subtasks = tuple(
                replace(s, status=result.status, attempts=result.attempts,
                        exit_code=result.exit_code if result.exit_code is not None else s.exit_code,
                        outputs=result.outputs if result.outputs is not None else s.outputs)
                if s.key == result.key else
                replace(s, status=SubtaskStatus.RUNNING) if s.key == next_running else
                replace(s, status=SubtaskStatus.SKIPPED) if s.key in skipped else s
                for s in item.subtasks)
            logs = {**item.logs, result.key: result.log}
            summary = {**item.log_summary, result.key: result.record.to_map()}
            last_error = item.last_error
            if result.status is SubtaskStatus.DONE:
                row.subtasks_done += 1
            elif result.error_line is not None:
                last_error = result.error_line
            row.item = replace(item, subtasks=subtasks, logs=logs, log_summary=summary, last_error=last_error)
            if final is None:
                return frozenset()
            self._end(row, final)
            return row.item.dependents

    def finish(self, lease: Lease, final: ItemState, error_line: str | None = None,
               failed: Sequence[str] = (), skipped: Sequence[str] = ()) -> frozenset[str]:
        with self._lock:
            row = self._held(lease)
            statuses = {**dict.fromkeys(failed, SubtaskStatus.FAILED), **dict.fromkeys(skipped, SubtaskStatus.SKIPPED)}
            row.item = _with_statuses(row.item, statuses)
            self._end(row, final, error_line)
            return row.item.dependents

    def fail_rejected(self, lease: Lease, error_line: str) -> frozenset[str]:
        with self._lock:
            row = self._held(lease)
            row.item = replace(row.item, logs={})
            self._end(row, ItemState.FAILED, error_line)
            return row.item.dependents

    # -- workflows ------------------------------------------------------------------------

    def drop_upstream(self, item_id: str, upstream_id: str) -> Item | None:
        self._request()
        with self._lock:
            row = self._rows.get(item_id)
            if row is None or row.item.state is not ItemState.WAITING:
                return None
            row.item = replace(row.item, waiting_on=row.item.waiting_on - {upstream_id})
            return row.item

    def wake(self, item_id: str) -> bool:
        self._request()
        with self._lock:
            row = self._rows.get(item_id)
            if row is None or row.item.state is not ItemState.WAITING or row.item.waiting_on:
                return False
            row.item = replace(row.item, state=ItemState.TODO)
            return True

    def block(self, item_id: str, upstream_id: str) -> Item | None:
        self._request()
        with self._lock:
            row = self._rows.get(item_id)
            if row is None or row.item.state is not ItemState.WAITING:
                return None
            row.item = replace(row.item, state=ItemState.UPSTREAM_FAILED, blocked_by=upstream_id)
            return row.item

    def unblock(self, item_id: str) -> Item | None:
        self._request()
        with self._lock:
            row = self._rows.get(item_id)
            if row is None or row.item.state is not ItemState.UPSTREAM_FAILED:
                return None
            row.item = replace(row.item, state=ItemState.WAITING, blocked_by=None, done_date=None)
            return row.item

    def add_dependents(self, item_id: str, dependents: Iterable[str]) -> bool:
        self._request()
        with self._lock:
            row = self._rows.get(item_id)
            if row is None:
                return False
            row.item = replace(row.item, dependents=row.item.dependents | set(dependents))
            return True

    def release(self, lease: Lease, interrupted: list[str]) -> None:
        with self._lock:
            row = self._held(lease)
            row.item = replace(_with_statuses(row.item, dict.fromkeys(interrupted, SubtaskStatus.TODO)),
                               state=ItemState.TODO, lease_token=None, lease_expiry=None)

    def _end(self, row: _Row, final: ItemState, error: str | None = None) -> None:
        done = utc_now_iso() if final is ItemState.DONE else row.item.done_date
        row.item = replace(row.item, state=final, lease_token=None, lease_expiry=None, done_date=done,
                           last_error=error if error is not None else row.item.last_error)

    # -- writes without a lease -----------------------------------------------------------

    def put_new(self, item: Item) -> bool:
        self._request()
        with self._lock:
            if item.item_id in self._rows:
                return False
            self._rows[item.item_id] = _Row(item)
            return True

    def replace_unless_held(self, item: Item) -> bool | None:
        self._request()
        with self._lock:
            old = self._rows.get(item.item_id)
            if old is not None and old.item.lease_live(self.clock()):
                return None
            if old is not None:  # the run it replaces goes to Earlier_Runs, as a rerun's does
                item = replace(item, earlier_runs=old.item.runs_with_this_one(), version=old.item.version + 1)
            self._rows[item.item_id] = _Row(item)
            return old is not None

    def reset(self, item: Item, subtasks: Sequence[str], *, clear_attempts: bool) -> bool:
        with self._lock:
            row = self._unchanged(item)
            if row is None:
                return False
            changed = _subtasks_to_todo(row.item, subtasks, clear_attempts)
            row.item = replace(changed, state=ItemState.TODO, lease_token=None, lease_expiry=None,
                               done_date=None, last_error=None)
            _count_crashes_again(row)
            return True

    def revoke(self, item: Item, subtasks: Sequence[str], *, clear_attempts: bool) -> bool:
        with self._lock:
            row = self._unchanged(item)
            if row is None:
                return False
            changed = _subtasks_to_todo(row.item, subtasks, clear_attempts)
            row.item = replace(changed, lease_token=f"revoked-{secrets.token_hex(8)}", last_error=None)
            row.abandoned -= 1
            return True

    def cancel(self, item: Item) -> bool:
        with self._lock:
            row = self._unchanged(item)
            if row is None:
                return False
            running = {s.key: SubtaskStatus.TODO for s in row.item.subtasks if s.status is SubtaskStatus.RUNNING}
            row.item = _with_statuses(row.item, running)
            self._end(row, ItemState.CANCELLED)
            return True

    def rerun(self, item: Item) -> bool:
        with self._lock:
            row = self._unchanged(item)
            if row is None:
                return False
            earlier = row.item.runs_with_this_one()
            row.item = replace(row.item, subtasks=tuple(Subtask(s.key, s.script, label=s.label)
                                                                  for s in row.item.subtasks),
                               state=ItemState.TODO, lease_token=None, lease_expiry=None, done_date=None,
                               last_error=None, logs={}, log_summary={}, earlier_runs=earlier)
            _count_crashes_again(row)
            row.subtasks_done = 0
            return True

    def _unchanged(self, item: Item) -> _Row | None:
        self._request()
        row = self._rows.get(item.item_id)
        if (row is None or row.item.version != item.version or row.item.state is not item.state
                or row.item.lease_token != item.lease_token):
            return None
        return row

    # -- worker records -------------------------------------------------------------------

    def put_worker_record(self, key: str, values: dict[str, Any]) -> None:
        self._request()
        with self._lock:
            self.workers[key] = dict(values)

    def upsert_worker_record(self, key: str, values: dict[str, Any]) -> None:
        self._request()
        with self._lock:
            self.workers.setdefault(key, {}).update(values)

    def update_worker_record(self, key: str, values: dict[str, Any]) -> None:
        self._request()
        with self._lock:
            if key not in self.workers:
                raise QueueError(f"no worker record {key}")
            self.workers[key].update(values)

    def worker_records(self) -> Iterator[dict[str, Any]]:
        with self._lock:
            yield from (dict(v) for v in self.workers.values())

    # -- reads ----------------------------------------------------------------------------

    def get(self, item_id: str) -> Item | None:
        self._request()
        with self._lock:
            row = self._rows.get(item_id)
            return None if row is None else row.item

    def abandoned(self, item_id: str) -> tuple[int, str | None]:
        """The crash count and the last holder (the real queue stores them as attributes)."""
        row = self._rows[item_id]
        return _crashes(row), row.last_holder

    def any_in_state(self, state: ItemState) -> bool:
        self._request()
        with self._lock:
            return any(row.item.state is state for row in self._rows.values())

    def index_rows(self, state: ItemState, attributes: list[str]) -> Iterator[dict[str, Any]]:
        self._request()
        with self._lock:
            rows = [row for row in self._rows.values() if row.item.state is state]
        for row in rows:
            values = {Attr.ITEM_ID: row.item.item_id, Attr.TASK_ID: row.item.task_id,
                      Attr.INSTANCE_ID: row.item.instance_id, Attr.LEASE_EXPIRY: row.item.lease_expiry,
                      Attr.SUBTASK_COUNT: len(row.item.subtasks), Attr.SUBTASKS_DONE: row.subtasks_done,
                      Attr.LAST_ERROR: row.item.last_error}
            yield {name: to_dynamo(values[name]) for name in attributes if values.get(name) is not None}

    def query_index(self, index: str, key: tuple[str, str], sort: tuple[str, str] | None = None,
                    attributes: Sequence[str] = (Attr.ITEM_ID,)) -> Iterator[dict[str, Any]]:
        self._request()
        fields = {Attr.TASK_ID: "task_id", Attr.INSTANCE_ID: "instance_id", Attr.STATE: "state"}
        with self._lock:
            items = [row.item for row in self._rows.values()]
        for item in items:
            matches = all(_text(getattr(item, fields[name])) == value for name, value in filter(None, (key, sort)))
            if matches:
                yield {Attr.ITEM_ID: {"S": item.item_id}}


def _text(value: Any) -> str | None:
    return value.value if isinstance(value, ItemState) else value


def _with_statuses(item: Item, statuses: dict[str, SubtaskStatus]) -> Item:
    return replace(item, subtasks=tuple(replace(s, status=statuses.get(s.key, s.status)) for s in item.subtasks))


def _subtasks_to_todo(item: Item, keys: Sequence[str], clear_attempts: bool) -> Item:
    return replace(item, subtasks=tuple(
        replace(s, status=SubtaskStatus.TODO, attempts=0 if clear_attempts else s.attempts, outputs=None)
        if s.key in keys else s
        for s in item.subtasks))


def item(item_id: str, *scripts: str, task_id: str = "T") -> Item:
    return Item(item_id, task_id, tuple(Subtask(f"Task_{n}", s) for n, s in enumerate(scripts or ("true",))))


def put(queue: InMemoryQueue, *items: Item) -> None:
    for it in items:
        assert queue.put_new(it)
