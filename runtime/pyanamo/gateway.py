"""The PyAnamo table's gateway: every read and every write of an item except a claim.

Every write is conditional, with conditions built by the named helpers below (``is_state``,
``lease_is``, ``version_is``, ``lease_expired``, ``not_held``, ``absent``), so each rule is written
once. A write under a lease (a sub-task's result, the item's end, its release) applies only while
the writer's lease token is the item's, so a worker that has lost its lease can never overwrite
the work of the item's new owner. An operator's write (reset, revoke, cancel, rerun) applies only
to the version of the item it read. Every request goes through ``_call``, which raises the typed
errors of ``errors`` instead of boto3's. Claims, and the settings only a claimer has (owner, lease
length, crash limit), are ``queue.TaskQueue``'s.
"""

from __future__ import annotations

import contextlib
import json
import queue
import secrets
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from .clock import EndpointClock
from .errors import BOTO_ERRORS, ConditionFailed, ItemRejected, MalformedItem, translate
from .events import emit
from .expressions import Expression
from .model import Item, Subtask, from_dynamo, to_dynamo, utc_now_iso
from .runs import RunRecord
from .schema import (
    STATE_INDEX,
    SUBTASK_ATTEMPTS,
    SUBTASK_EXIT_CODE,
    SUBTASK_OUTPUTS,
    SUBTASK_STATUS,
    WORKERS_SHARD,
    Attr,
    ItemState,
    SubtaskStatus,
    expiry_rank,
    shard_keys,
    state_shard,
)


class LeaseLost(Exception):
    """The item is no longer ours: its lease token changed (reclaimed, reset or replaced)."""


@dataclass(frozen=True)
class Lease:
    item_id: str
    token: str
    expiry: float  # epoch seconds


@dataclass(frozen=True)
class SubtaskResult:
    """The outcome of one run of a sub-task, as written back to the item."""

    key: str
    status: SubtaskStatus
    attempts: int
    exit_code: int | None
    log: dict[str, str]
    record: RunRecord  # stored in Log_Summary.<key>
    error_line: str | None = None
    outputs: dict[str, Any] | None = None  # the manifest of a done attempt's staged outputs


def crashes(row: dict[str, Any]) -> int:
    """Abandoned claims whose holder never came back: what --max-claims counts."""
    abandoned = set(row.get(Attr.ABANDONED_LEASES, {}).get("SS", ()))
    returned = set(row.get(Attr.RETURNED_LEASES, {}).get("SS", ()))
    return int(row.get(Attr.ABANDONED, {}).get("N", "0")) - len(abandoned & returned)


def _lease_missing(row: dict[str, Any]) -> bool:
    return Attr.LEASE_TOKEN not in row or Attr.LEASE_EXPIRY not in row


def index_disagrees(row: dict[str, Any]) -> str | None:
    """Why an item's state-index keys do not match its state (None if they do, or if its state
    is not one PyAnamo knows: that item is malformed, not mis-indexed). Such an item is never
    claimed, or keeps the queue from draining."""
    stored = row.get(Attr.STATE, {}).get("S")
    if stored not in {s.value for s in ItemState}:
        return None
    shard = row.get(Attr.STATE_SHARD, {}).get("S")
    if shard is None or Attr.STATE_RANK not in row:
        return "missing from the state index (no State_Shard or State_Rank)"
    indexed = shard.split("#", 1)[0]
    if indexed != stored:
        return f"lockID is {stored} but it is indexed as {indexed} ({shard})"
    if stored == ItemState.LOCKED.value and _lease_missing(row):
        return "locked without a lease (no Lease_Token or Lease_Expiry)"
    return None


def _earlier_runs_with(row: dict[str, Any]) -> tuple[Any, ...]:
    """``Item.runs_with_this_one`` of an item replaced by an import; an item that cannot be read
    keeps no record."""
    try:
        return Item.from_row(row).runs_with_this_one()
    except MalformedItem:
        return ()


def not_held_now(row: dict[str, Any], now: float) -> bool:
    """Whether no worker holds the item of ``row`` (not locked, or its lease ran out)."""
    if row.get(Attr.STATE, {}).get("S") != ItemState.LOCKED.value:
        return True
    expiry = row.get(Attr.LEASE_EXPIRY, {}).get("N")
    return expiry is not None and float(expiry) < now


def _count_crashes_again(expr: Expression) -> Expression:
    """An item reset or rerun by hand starts its crash count again."""
    return expr.set(Attr.ABANDONED, 0).remove(Attr.ABANDONED_LEASES).remove(Attr.RETURNED_LEASES)


# -- conditions, each written once ----------------------------------------------------------

def is_state(expr: Expression, state: ItemState) -> Expression:
    return expr.when(f"{{a:{Attr.STATE}}} = {{state}}", state=state.value)


def lease_is(expr: Expression, token: str | None) -> Expression:
    """The item still carries this lease token (or none, for ``None``)."""
    if token is None:
        return expr.when(f"attribute_not_exists({{a:{Attr.LEASE_TOKEN}}})")
    return expr.when(f"{{a:{Attr.LEASE_TOKEN}}} = {{token}}", token=token)


def lease_expired(expr: Expression, now: float) -> Expression:
    """Locked, and its lease ran out before ``now``: the holder is gone."""
    return expr.when(f"{{a:{Attr.STATE}}} = {{locked}} AND {{a:{Attr.LEASE_EXPIRY}}} < {{now}}",
                     locked=ItemState.LOCKED.value, now=round(now, 3))


def not_held(expr: Expression, now: float) -> Expression:
    """No worker holds the item now (it may not even exist)."""
    return expr.when(
        f"attribute_not_exists({{a:{Attr.ITEM_ID}}}) OR {{a:{Attr.STATE}}} <> {{locked}} "
        f"OR {{a:{Attr.LEASE_EXPIRY}}} < {{now}}",
        locked=ItemState.LOCKED.value, now=round(now, 3))


def version_is(expr: Expression, version: int) -> Expression:
    """Nobody changed the item since it was read at ``version`` (0: never changed)."""
    if version == 0:
        return expr.when(f"attribute_not_exists({{a:{Attr.VERSION}}})")
    return expr.when(f"{{a:{Attr.VERSION}}} = {{version}}", version=version)


def changes(expr: Expression) -> Expression:
    """Mark ``expr`` as a change to what the item is: its version goes up by one."""
    return expr.add(Attr.VERSION, 1)


def subtask_is(expr: Expression, key: str, status: SubtaskStatus) -> Expression:
    path = ".".join((Attr.TASK_SCRIPT, key, SUBTASK_STATUS))
    return expr.when(f"{{a:{path}}} = {{status}}", status=status.value)


def stored_state_is(expr: Expression, value: str | None) -> Expression:
    """``lockID`` holds exactly ``value`` (None: no lockID at all), whatever it says: for items
    whose state is not one PyAnamo knows."""
    if value is None:
        return expr.when(f"attribute_not_exists({{a:{Attr.STATE}}})")
    return expr.when(f"{{a:{Attr.STATE}}} = {{state}}", state=value)


def absent(expr: Expression) -> Expression:
    return expr.when(f"attribute_not_exists({{a:{Attr.ITEM_ID}}})")


def present(expr: Expression) -> Expression:
    return expr.when(f"attribute_exists({{a:{Attr.ITEM_ID}}})")


def to_todo(expr: Expression, item_id: str) -> Expression:
    """Turn ``expr`` into a return to todo: state index entry and lease cleared."""
    expr.set(Attr.STATE, ItemState.TODO.value)
    expr.set(Attr.STATE_SHARD, state_shard(ItemState.TODO, item_id))
    expr.set(Attr.STATE_RANK, secrets.token_hex(8))
    return expr.remove(Attr.LEASE_TOKEN).remove(Attr.LEASE_EXPIRY)


def to_waiting(expr: Expression, item_id: str) -> Expression:
    """Turn ``expr`` into a return to waiting (for the items in ``Waiting_On``)."""
    expr.set(Attr.STATE, ItemState.WAITING.value)
    expr.set(Attr.STATE_SHARD, state_shard(ItemState.WAITING, item_id))
    expr.set(Attr.STATE_RANK, secrets.token_hex(8))
    return expr.remove(Attr.BLOCKED_BY).remove(Attr.DONE_DATE)


def to_final(expr: Expression, item_id: str, final: ItemState) -> Expression:
    """Turn ``expr`` into the end of the item in ``final`` (done or failed)."""
    date = utc_now_iso()
    expr.set(Attr.STATE, final.value)
    expr.set(Attr.STATE_SHARD, state_shard(final, item_id))
    expr.set(Attr.STATE_RANK, date)
    if final is ItemState.DONE:
        expr.set(Attr.DONE_DATE, date)
    return expr.remove(Attr.LEASE_TOKEN).remove(Attr.LEASE_EXPIRY)


BATCH_GET_KEYS = 100  # DynamoDB's limit per BatchGetItem
BATCH_GET_AHEAD = 2  # BatchGetItem requests in flight while the rows of another are read
# Scan segments read at once by `scan_rows`. At 100,000 items on dynalite (2 cores), one Scan of
# the report's attributes took 8.3 s and 4.6 s of the endpoint's CPU, two segments 6.0 s, four
# 5.1 s; the state index + BatchGetItem path 14.0 s and 12.6 s of its CPU. The whole report
# (bench/report_bench.py) took 13.0-14.5 s with two, 14.8 s with one and 15.1-15.5 s with four:
# past two, the threads decoding pages contend for the GIL with the report's own work.
SCAN_SEGMENTS = 2


AS_SENT = ("BatchGetItem", "Query", "Scan", "GetItem", "UpdateItem")


def _as_sent(response_dict: dict[str, Any], customized_response_dict: dict[str, Any], **_: Any) -> None:
    """Answers (``AS_SENT``) as DynamoDB sent them, not walked attribute by attribute through the
    service model: botocore's parser took a third of the report's time at 100,000 items, and
    about 0.5 ms of a worker's CPU per claim or result write; for these answers it produces the
    same low-level form (``{"S": ...}``), the one difference being that a binary value (``B``,
    which PyAnamo never writes) stays base64 text.
    botocore's ``before-parse`` event merges ``customized_response_dict`` into the parsed answer;
    the body left to parse is then empty. Errors are parsed as usual."""
    if response_dict.get("status_code") == 200 and response_dict.get("body"):
        customized_response_dict.update(json.loads(response_dict["body"]))
        response_dict["body"] = b"{}"


class TableGateway:
    """One table, read and written item by item (no claims). The CLI's commands that do not claim
    use it as it is; ``queue.TaskQueue`` adds claiming. Thread-safe."""

    def __init__(self, client: Any, table: str) -> None:
        self.client = client
        self.table = table
        with contextlib.suppress(AttributeError):  # a client without botocore's events (a stand-in)
            for operation in AS_SENT:
                client.meta.events.register(f"before-parse.dynamodb.{operation}", _as_sent,
                                            unique_id=f"pyanamo-as-sent-{operation}")
        self.clock = EndpointClock()  # lease times are on the endpoint's clock, never this machine's

    def now(self) -> float:
        """The time leases are judged by: the endpoint's (``clock``)."""
        return self.clock.now()

    def _call(self, operation: str, **request: Any) -> dict[str, Any]:
        """One DynamoDB request on this table; boto3's errors come out typed (``errors``)."""
        sent = time.monotonic()
        try:
            response: dict[str, Any] = getattr(self.client, operation)(TableName=self.table, **request)
        except BOTO_ERRORS as exc:
            answer = getattr(exc, "response", None)
            if isinstance(answer, dict):
                self._observe(sent, answer)
            raise translate(exc) from exc
        self._observe(sent, response)
        return response

    def _observe(self, sent: float, response: dict[str, Any]) -> None:
        headers = response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
        self.clock.observe(sent, time.monotonic(), headers.get("date"))

    def fix_index(self, row: dict[str, Any]) -> bool:
        """Give an item the state-index keys its state calls for (``index_disagrees``); a lock
        without a lease goes back to todo (no holder can write to it: every write is fenced by a
        token it lacks). Only if the item is still as read; False if it changed meanwhile."""
        item_id = row[Attr.ITEM_ID]["S"]
        stored = row.get(Attr.STATE, {}).get("S")
        state = ItemState(stored)
        expr = Expression()
        if state is ItemState.LOCKED and _lease_missing(row):
            changes(to_todo(expr, item_id))
        else:
            expr.set(Attr.STATE_SHARD, state_shard(state, item_id))
            expiry = row.get(Attr.LEASE_EXPIRY, {}).get("N")
            rank = (secrets.token_hex(8) if state is ItemState.TODO
                    else expiry_rank(float(expiry)) if state is ItemState.LOCKED and expiry
                    else row.get(Attr.DONE_DATE, {}).get("S") or utc_now_iso())
            expr.set(Attr.STATE_RANK, rank)
        stored_state_is(expr, stored)
        shard = row.get(Attr.STATE_SHARD, {}).get("S")
        if shard is None:
            expr.when(f"attribute_not_exists({{a:{Attr.STATE_SHARD}}})")
        else:
            expr.when(f"{{a:{Attr.STATE_SHARD}}} = {{shard}}", shard=shard)
        lease_is(expr, row.get(Attr.LEASE_TOKEN, {}).get("S"))
        try:
            self._call("update_item", Key=item_key(item_id), **expr.request())
        except (ConditionFailed, ItemRejected):
            return False
        emit("index_repaired", item=item_id, state=stored, was=shard)
        return True

    def scan_rows(self, attributes: Sequence[str], segments: int = SCAN_SEGMENTS) -> Iterator[dict[str, Any]]:
        """The given attributes of every row of the table, in no particular order: a parallel Scan
        of ``segments`` segments, each paginated on a thread of its own, a few pages held at once.
        For what must read every item anyway: `repair` (which must find items the index has
        lost) and the report. Eventually consistent."""
        names = {f"#p{n}": name for n, name in enumerate(attributes)}
        request = {"TableName": self.table, "ProjectionExpression": ", ".join(names),
                   "ExpressionAttributeNames": names, "TotalSegments": segments}
        pages: queue.Queue[list[dict[str, Any]] | BaseException | None] = queue.Queue(maxsize=1)
        stop = threading.Event()

        def put(page: list[dict[str, Any]] | BaseException | None) -> bool:
            while not stop.is_set():
                with contextlib.suppress(queue.Full):
                    pages.put(page, timeout=0.5)
                    return True
            return False  # the reader went away

        def read(segment: int) -> None:
            try:
                for page in self.client.get_paginator("scan").paginate(Segment=segment, **request):
                    if not put(page.get("Items", [])):
                        return
            except BOTO_ERRORS as exc:
                put(translate(exc))
            except BaseException as exc:  # noqa: BLE001 - handed to the reader, which raises it
                put(exc)
            finally:
                put(None)

        threads = [threading.Thread(target=read, args=(n,), name=f"scan-{n}", daemon=True) for n in range(segments)]
        for thread in threads:
            thread.start()
        try:
            running = segments
            while running:
                page = pages.get()
                if page is None:
                    running -= 1
                elif isinstance(page, BaseException):
                    raise page
                else:
                    yield from page
        finally:
            stop.set()

    def _read_row(self, item_id: str) -> dict[str, Any] | None:
        return self._call("get_item", Key=item_key(item_id), ConsistentRead=True).get("Item")

    # -- writes under a lease -------------------------------------------------------------

    def _fenced_update(self, lease: Lease, expr: Expression, *, renewal: bool = False,
                       ending: bool = False) -> frozenset[str]:
        """An update that applies only while ``lease`` is the item's lease; else LeaseLost.
        Every such write but a renewal changes the item's version (``version_is``). A write that
        ends the item (``ending``) returns the items that wait for it, as they are now (an import
        may have added some since the claim). ItemRejected passes through: the write is invalid
        and retrying cannot help."""
        lease_is(expr, lease.token)
        if not renewal:
            changes(expr)
        try:
            response = self._call("update_item", Key=item_key(lease.item_id),
                                  **({"ReturnValues": "ALL_NEW"} if ending else {}), **expr.request())
        except ConditionFailed as exc:
            raise LeaseLost(lease.item_id) from exc
        waiting = response.get("Attributes", {}).get(Attr.DEPENDENTS, {}).get("SS", ())
        return frozenset(waiting)

    def came_back(self, lease: Lease) -> None:
        """Say that the holder of ``lease`` is alive after losing it (paused, asleep, cut off):
        if the item was or will be reclaimed as abandoned, that claim is no crash. Idempotent
        (a set), and harmless if the lease was never reclaimed."""
        expr = Expression().add(Attr.RETURNED_LEASES, {lease.token})
        expr.when(f"attribute_exists({{a:{Attr.ITEM_ID}}})")
        with contextlib.suppress(ConditionFailed, ItemRejected):
            self._call("update_item", Key=item_key(lease.item_id), **expr.request())

    def mark_running(self, lease: Lease, keys: list[str]) -> None:
        expr = Expression()
        for key in keys:
            expr.set((Attr.TASK_SCRIPT, key, SUBTASK_STATUS), SubtaskStatus.RUNNING.value)
        self._fenced_update(lease, expr)

    def record(
        self,
        lease: Lease,
        result: SubtaskResult,
        *,
        final: ItemState | None = None,
        next_running: str | None = None,
        skipped: Sequence[str] = (),
    ) -> frozenset[str]:
        """Write one sub-task's outcome; with ``final``, also end the item in that state.
        ``skipped`` sub-tasks will never run (an ``On_Failure: stop`` item failed before them)."""
        expr = Expression()
        self._set_result(expr, result)
        for key in skipped:
            expr.set((Attr.TASK_SCRIPT, key, SUBTASK_STATUS), SubtaskStatus.SKIPPED.value)
        if next_running:
            expr.set((Attr.TASK_SCRIPT, next_running, SUBTASK_STATUS), SubtaskStatus.RUNNING.value)
        if final is not None:
            to_final(expr, lease.item_id, final)
        return self._fenced_update(lease, expr, ending=final is not None)

    def finish(self, lease: Lease, final: ItemState, error_line: str | None = None,
               failed: Sequence[str] = (), skipped: Sequence[str] = ()) -> frozenset[str]:
        """End the item as done or failed (when its last result was already written);
        ``failed`` sub-tasks are marked failed on the way (no attempts left)."""
        expr = Expression()
        if error_line is not None:
            expr.set(Attr.LAST_ERROR, error_line)
        for key in failed:
            expr.set((Attr.TASK_SCRIPT, key, SUBTASK_STATUS), SubtaskStatus.FAILED.value)
        for key in skipped:
            expr.set((Attr.TASK_SCRIPT, key, SUBTASK_STATUS), SubtaskStatus.SKIPPED.value)
        return self._fenced_update(lease, to_final(expr, lease.item_id, final), ending=True)

    def fail_rejected(self, lease: Lease, error_line: str) -> frozenset[str]:
        """End an item whose write DynamoDB refused as invalid (too large, most often). The stored
        log tails go first, in a write of its own that only shrinks the item (moto even applies a
        refused update in part, so the item may have grown); the full logs stay where
        ``Log_Location`` says."""
        self._fenced_update(lease, Expression().remove(Attr.LOG))
        return self._fenced_update(lease, to_final(Expression().set(Attr.LOG, {}).set(Attr.LAST_ERROR, error_line),
                                                   lease.item_id, ItemState.FAILED), ending=True)

    def release(self, lease: Lease, interrupted: list[str]) -> None:
        """Give the item back as todo; finished sub-tasks are kept, interrupted ones rerun."""
        expr = Expression()
        for key in interrupted:
            expr.set((Attr.TASK_SCRIPT, key, SUBTASK_STATUS), SubtaskStatus.TODO.value)
        self._fenced_update(lease, to_todo(expr, lease.item_id))

    @staticmethod
    def _set_result(expr: Expression, result: SubtaskResult) -> None:
        base = (Attr.TASK_SCRIPT, result.key)
        expr.set((*base, SUBTASK_STATUS), result.status.value)
        expr.set((*base, SUBTASK_ATTEMPTS), result.attempts)
        if result.exit_code is not None:
            expr.set((*base, SUBTASK_EXIT_CODE), result.exit_code)
        expr.set((Attr.LOG, result.key), result.log)
        expr.set((Attr.LOG_SUMMARY, result.key), result.record.to_map())
        if result.outputs is not None:
            expr.set((*base, SUBTASK_OUTPUTS), result.outputs)
        if result.status is SubtaskStatus.DONE:
            expr.add(Attr.SUBTASKS_DONE, 1)
        elif result.error_line is not None:
            expr.set(Attr.LAST_ERROR, result.error_line)

    # -- writes without a lease: imports and the operator's commands -----------------------

    def put_new(self, item: Item) -> bool:
        """Import ``item`` unless its itemID exists (whoever wrote it, even a concurrent import)."""
        try:
            self._call("put_item", Item=item.new_row(), **absent(Expression()).request())
        except ConditionFailed:
            return False
        return True

    def replace_unless_held(self, item: Item) -> bool | None:
        """Import ``item`` over an existing one, unless a worker holds that one now (it would go
        on running the old sub-tasks while another worker claims the new ones): None if held,
        else whether an item was replaced."""
        for _ in range(3):  # the old item changed between the read and the put: read it again
            old = self._read_row(item.item_id)
            row = item.new_row()
            expr = not_held(Expression(), self.now())
            if old is not None:
                # as `reset --rerun` does, the run it replaces is kept in Earlier_Runs (a fixed script
                # imported again must not make the failure it fixed vanish from the report)
                earlier = _earlier_runs_with(old)
                if earlier:
                    row[Attr.EARLIER_RUNS] = to_dynamo(list(earlier))
                # a newer version than any the replaced item had: an admin command that read the
                # old one cannot apply its change to the new one
                row[Attr.VERSION] = to_dynamo(int(old.get(Attr.VERSION, {}).get("N", "0")) + 1)
                # the items that wait for it still do: the new one releases them
                waiting = set(old.get(Attr.DEPENDENTS, {}).get("SS", ())) | item.dependents
                if waiting:
                    row[Attr.DEPENDENTS] = to_dynamo(waiting)
                stored_state_is(expr, old.get(Attr.STATE, {}).get("S"))
                lease_is(expr, old.get(Attr.LEASE_TOKEN, {}).get("S"))
            try:
                response = self._call("put_item", Item=row, ReturnValues="ALL_OLD", **expr.request())
            except ConditionFailed:
                now_row = self._read_row(item.item_id)
                if now_row is None or not_held_now(now_row, self.now()):
                    continue  # it changed between the read and the put, and nobody holds it
                return None
            return bool(response.get("Attributes"))
        return None

    def reset(self, item: Item, subtasks: Sequence[str], *, clear_attempts: bool) -> bool:
        """Put an item no worker holds back to todo, with ``subtasks`` set to todo; False if the
        item changed since it was read. The crash count starts again."""
        expr = self._subtasks_to_todo(subtasks, clear_attempts)
        to_todo(expr, item.item_id).remove(Attr.DONE_DATE).remove(Attr.LAST_ERROR)
        _count_crashes_again(expr)
        return self._unchanged_update(item, expr)

    def revoke(self, item: Item, subtasks: Sequence[str], *, clear_attempts: bool) -> bool:
        """Take a live item from its holder: its next renewal fails and it stops the item's
        processes. Nobody may claim it before the old lease runs out, so no two runs overlap.
        The claim that follows is not counted as an abandoned one (the count is pre-decremented)."""
        expr = self._subtasks_to_todo(subtasks, clear_attempts)
        expr.set(Attr.LEASE_TOKEN, f"revoked-{secrets.token_hex(8)}").remove(Attr.LAST_ERROR)
        expr.add(Attr.ABANDONED, -1)
        return self._unchanged_update(item, expr)

    def cancel(self, item: Item) -> bool:
        """End an item for good: no one claims a cancelled item (until it is reset). A holder
        loses its lease (the token goes), so its next renewal fails and it stops the item's
        processes; sub-tasks that were running are set back to todo (they did not finish)."""
        running = [s.key for s in item.subtasks if s.status is SubtaskStatus.RUNNING]
        expr = self._subtasks_to_todo(running, clear_attempts=False)
        return self._unchanged_update(item, to_final(expr, item.item_id, ItemState.CANCELLED))

    def rerun(self, item: Item) -> bool:
        """Run an item no worker holds again from its first sub-task. The record of the run it
        had (when it ended, where, each sub-task's exit code, times and memory) is kept in
        ``Earlier_Runs`` (the last few) and its log tails are cleared."""
        fresh = {s.key: Subtask(s.key, s.script, label=s.label).to_map() for s in item.subtasks}
        earlier = list(item.runs_with_this_one())  # a rerun item has ended: its run is kept
        expr = (
            Expression()
            .set(Attr.TASK_SCRIPT, fresh)
            .set(Attr.EARLIER_RUNS, earlier)
            .set(Attr.LOG, {})
            .set(Attr.LOG_SUMMARY, {})
            .set(Attr.SUBTASKS_DONE, 0)
        )
        _count_crashes_again(expr)
        to_todo(expr, item.item_id).remove(Attr.DONE_DATE).remove(Attr.LAST_ERROR)
        return self._unchanged_update(item, expr)

    @staticmethod
    def _subtasks_to_todo(keys: Sequence[str], clear_attempts: bool) -> Expression:
        expr = Expression()
        for key in keys:
            expr.set((Attr.TASK_SCRIPT, key, SUBTASK_STATUS), SubtaskStatus.TODO.value)
            expr.remove((Attr.TASK_SCRIPT, key, SUBTASK_OUTPUTS))  # its next run commits its own
            if clear_attempts:
                expr.set((Attr.TASK_SCRIPT, key, SUBTASK_ATTEMPTS), 0)
        return expr

    def _unchanged_update(self, item: Item, expr: Expression) -> bool:
        """Apply ``expr`` only if nobody changed the item since it was read (a worker claiming
        it, finishing a sub-task or ending it): the version it was read at, and its state and
        lease as a second guard."""
        lease_is(is_state(changes(version_is(expr, item.version)), item.state), item.lease_token)
        try:
            self._call("update_item", Key=item_key(item.item_id), **expr.request())
        except ConditionFailed:
            return False
        return True

    # -- workflows: the writes ``dependencies`` decides ----------------------------------

    def _state_change(self, item_id: str, expr: Expression) -> Item | None:
        """Apply a conditional change; the item as it is after, or None if the condition failed."""
        try:
            response = self._call("update_item", Key=item_key(item_id), ReturnValues="ALL_NEW",
                                  **changes(expr).request())
        except ConditionFailed:
            return None
        return Item.from_row(response["Attributes"])

    def drop_upstream(self, item_id: str, upstream_id: str) -> Item | None:
        """Strike ``upstream_id`` (done) off a waiting item's ``Waiting_On``; None if the item
        is not waiting (released, blocked or gone meanwhile). Idempotent."""
        expr = is_state(Expression().delete(Attr.WAITING_ON, {upstream_id}), ItemState.WAITING)
        return self._state_change(item_id, expr)

    def wake(self, item_id: str) -> bool:
        """waiting -> todo, only once nothing is left in its ``Waiting_On``."""
        expr = is_state(to_todo(Expression(), item_id), ItemState.WAITING)
        expr.when(f"attribute_not_exists({{a:{Attr.WAITING_ON}}})")
        return self._state_change(item_id, expr) is not None

    def block(self, item_id: str, upstream_id: str) -> Item | None:
        """waiting -> upstream_failed, naming the upstream item that ended failed or cancelled."""
        expr = to_final(Expression().set(Attr.BLOCKED_BY, upstream_id), item_id, ItemState.UPSTREAM_FAILED)
        return self._state_change(item_id, is_state(expr, ItemState.WAITING))

    def unblock(self, item_id: str) -> Item | None:
        """upstream_failed -> waiting (the item that blocked it was reset)."""
        return self._state_change(item_id, is_state(to_waiting(Expression(), item_id), ItemState.UPSTREAM_FAILED))

    def add_dependents(self, item_id: str, dependents: Iterable[str]) -> bool:
        """Record on an existing item which items wait for it (an import of later steps)."""
        expr = present(Expression().add(Attr.DEPENDENTS, set(dependents)))
        return self._state_change(item_id, expr) is not None

    # -- reads ----------------------------------------------------------------------------

    def still_held(self, lease: Lease) -> bool:
        """Whether ``lease`` is still the item's (a consistent read of two attributes)."""
        row = self._call("get_item", Key=item_key(lease.item_id), ConsistentRead=True,
                         ProjectionExpression="#s, #t",
                         ExpressionAttributeNames={"#s": Attr.STATE, "#t": Attr.LEASE_TOKEN}).get("Item")
        return (row is not None and row.get(Attr.STATE, {}).get("S") == ItemState.LOCKED.value
                and row.get(Attr.LEASE_TOKEN, {}).get("S") == lease.token)

    def exists(self, item_id: str) -> bool:
        """Whether an item with this ID is in the table (in any state, readable or not)."""
        return self._read_row(item_id) is not None

    def get(self, item_id: str) -> Item | None:
        row = self._read_row(item_id)
        return Item.from_row(row) if row else None

    def any_in_state(self, state: ItemState) -> bool:
        """Whether at least one item is in ``state`` (Limit 1 per shard; no Scan)."""
        for shard in shard_keys(state):
            response = self._call(
                "query",
                IndexName=STATE_INDEX.name,
                KeyConditionExpression="#s = :s",
                ExpressionAttributeNames={"#s": Attr.STATE_SHARD},
                ExpressionAttributeValues={":s": {"S": shard}},
                Select="COUNT",
                Limit=1,
            )
            if response.get("Count", 0):
                return True
        return False

    def count_in_state(self, state: ItemState) -> int:
        """How many items are in ``state`` (Select COUNT per shard: items are counted, not read)."""
        total = 0
        for shard in shard_keys(state):
            request: dict[str, Any] = {
                "IndexName": STATE_INDEX.name, "KeyConditionExpression": "#s = :s",
                "ExpressionAttributeNames": {"#s": Attr.STATE_SHARD},
                "ExpressionAttributeValues": {":s": {"S": shard}}, "Select": "COUNT"}
            while True:
                response = self._call("query", **request)
                total += response.get("Count", 0)
                if "LastEvaluatedKey" not in response:
                    break
                request["ExclusiveStartKey"] = response["LastEvaluatedKey"]
        return total

    # -- worker records (the run report; never claimed, counted or reset) -----------------

    def put_worker_record(self, key: str, values: dict[str, Any]) -> None:
        """Write a worker's record: a row with no lockID or taskID, in the state index's
        workers partition only."""
        row = {Attr.ITEM_ID: key, Attr.STATE_SHARD: WORKERS_SHARD, Attr.STATE_RANK: str(values.get("Started", "")),
               **values}
        self._call("put_item", Item={name: to_dynamo(value) for name, value in row.items()})

    def upsert_worker_record(self, key: str, values: dict[str, Any]) -> None:
        """Create or update a worker's record with UpdateItem (where PutItem is refused)."""
        row = {Attr.STATE_SHARD: WORKERS_SHARD, Attr.STATE_RANK: str(values.get("Started", "")), **values}
        expr = Expression()
        for name, value in row.items():
            expr.set(name, value)
        self._call("update_item", Key=item_key(key), **expr.request())

    def update_worker_record(self, key: str, values: dict[str, Any]) -> None:
        expr = Expression()
        for name, value in values.items():
            expr.set(name, value)
        self._call("update_item", Key=item_key(key), **present(expr).request())

    def worker_records(self) -> Iterator[dict[str, Any]]:
        """Every worker record, as plain values (Query on the workers partition, then BatchGetItem)."""
        keys = [r[Attr.ITEM_ID]["S"] for r in self.query_index(STATE_INDEX.name, (Attr.STATE_SHARD, WORKERS_SHARD))]
        for row in self.get_many(keys):
            yield from_dynamo(row)

    def get_many(self, item_ids: Sequence[str], attributes: Sequence[str] = ()) -> Iterator[dict[str, Any]]:
        """The rows of these items, only ``attributes`` if given (BatchGetItem, 100 keys a request;
        unprocessed keys are asked again). Eventually consistent: for listings, not decisions."""
        keys = [item_key(i) for i in dict.fromkeys(item_ids)]
        batches = deque(keys[n:n + BATCH_GET_KEYS] for n in range(0, len(keys), BATCH_GET_KEYS))
        request: dict[str, Any] = {}
        if attributes:
            names = {f"#p{n}": name for n, name in enumerate(attributes)}
            request = {"ProjectionExpression": ", ".join(names), "ExpressionAttributeNames": names}

        def fetch(batch: list[dict[str, Any]]) -> dict[str, Any]:
            try:
                answer: dict[str, Any] = self.client.batch_get_item(
                    RequestItems={self.table: {"Keys": batch, **request}})
                return answer
            except BOTO_ERRORS as exc:
                raise translate(exc) from exc

        # The next requests are in flight while the caller reads this one's rows: the endpoint
        # serves them meanwhile (a report of 100,000 items waited on it a third of its time).
        with ThreadPoolExecutor(max_workers=BATCH_GET_AHEAD) as pool:
            in_flight: deque[Future[dict[str, Any]]] = deque()
            while batches or in_flight:
                while batches and len(in_flight) < BATCH_GET_AHEAD:
                    in_flight.append(pool.submit(fetch, batches.popleft()))
                response = in_flight.popleft().result()
                unprocessed = response.get("UnprocessedKeys", {}).get(self.table, {}).get("Keys", [])
                if unprocessed:
                    batches.appendleft(unprocessed)
                yield from response.get("Responses", {}).get(self.table, [])

    def rows_in_state(self, state: ItemState, attributes: Sequence[str] = ()) -> Iterator[dict[str, Any]]:
        """The rows of every item in ``state`` (the state index for their IDs, then
        ``get_many``): for listings such as `ps` and the report, not for decisions."""
        ids = [row[Attr.ITEM_ID]["S"] for row in self.index_rows(state, [Attr.ITEM_ID])]
        return self.get_many(ids, attributes)

    def index_rows(self, state: ItemState, attributes: list[str]) -> Iterator[dict[str, Any]]:
        """The given attributes of every item in ``state`` (paginated Query per shard)."""
        for shard in shard_keys(state):
            yield from self._shard_rows(shard, attributes)

    def _shard_rows(self, shard: str, attributes: list[str]) -> Iterator[dict[str, Any]]:
        yield from self.query_index(STATE_INDEX.name, (Attr.STATE_SHARD, shard), attributes=attributes)

    def query_index(self, index: str, key: tuple[str, str], sort: tuple[str, str] | None = None,
                    attributes: Sequence[str] = (Attr.ITEM_ID,)) -> Iterator[dict[str, Any]]:
        """Rows of ``index`` whose partition key (and sort key, if given) equal these values
        (paginated Query)."""
        names = {"#k": key[0], **{f"#p{n}": name for n, name in enumerate(attributes)}}
        values = {":k": {"S": key[1]}}
        condition = "#k = :k"
        if sort:
            condition += " AND #r = :r"
            names["#r"], values[":r"] = sort[0], {"S": sort[1]}
        pages = self.client.get_paginator("query").paginate(
            TableName=self.table, IndexName=index, KeyConditionExpression=condition,
            ExpressionAttributeNames=names, ExpressionAttributeValues=values,
            ProjectionExpression=", ".join(n for n in names if n.startswith("#p")),
        )
        try:
            for page in pages:
                yield from page.get("Items", [])
        except BOTO_ERRORS as exc:
            raise translate(exc) from exc


def item_key(item_id: str) -> dict[str, Any]:
    return {Attr.ITEM_ID: {"S": item_id}}
