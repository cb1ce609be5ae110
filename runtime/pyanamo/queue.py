"""The DynamoDB task queue: claims, leases and fenced writes.

A claim is one conditional UpdateItem (todo, or locked with an expired lease -> locked) that
stores a fresh lease token. Every later write for the item is conditional on that token, so a
worker that has lost its lease can never overwrite the work of the item's new owner.
"""

from __future__ import annotations

import random
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from .aws import is_conditional_failure
from .expressions import Expression
from .model import Item, utc_now_iso
from .schema import (
    STATE_INDEX,
    SUBTASK_ATTEMPTS,
    SUBTASK_EXIT_CODE,
    SUBTASK_STATUS,
    Attr,
    ItemState,
    SubtaskStatus,
    expiry_rank,
    shard_keys,
    state_shard,
    subtask_key,
)

CANDIDATES_PER_QUERY = 8
CANDIDATE_MAX_AGE = 2.0  # seconds: older candidates have probably been taken by others
EMPTY_SHARD_SECONDS = 5.0  # how long a shard found empty is skipped (at most a quarter lease)


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
    summary: dict[str, Any]
    error_line: str | None = None


class TaskQueue:
    """One table seen as a queue. Thread-safe: slots of one worker share an instance."""

    def __init__(self, client: Any, table: str, *, owner: str = "", lease_seconds: float = 60):
        self.client = client
        self.table = table
        self.owner = owner
        self.lease_seconds = lease_seconds
        self._candidates: deque[str] = deque()
        self._fetched_at = 0.0
        self._empty_until: dict[str, float] = {}
        self._empty_shard_ttl = min(EMPTY_SHARD_SECONDS, lease_seconds / 4)
        self._lock = threading.Lock()

    # -- claiming -------------------------------------------------------------------------

    def claim(self) -> tuple[Item, Lease] | None:
        """Claim one todo (or expired) item, or return None when none is claimable now."""
        while True:
            item_id = self._next_candidate()
            if item_id is None:
                return None
            claimed = self._try_claim(item_id)
            if claimed is not None:
                return claimed
            with self._lock:  # its neighbours in the index are probably contended too: look elsewhere
                self._candidates.clear()

    def _next_candidate(self) -> str | None:
        with self._lock:
            if self._candidates and time.monotonic() - self._fetched_at < CANDIDATE_MAX_AGE:
                return self._candidates.popleft()
            self._candidates.clear()
        found = self._find_candidates()
        with self._lock:
            self._candidates.extend(found)
            self._fetched_at = time.monotonic()
            return self._candidates.popleft() if self._candidates else None

    def _find_candidates(self) -> list[str]:
        """Candidates from one shard, starting at a random rank so workers spread out.

        Shards found empty are skipped for a while (a quarter of the lease at most), so a
        draining queue does not cost a query per empty shard on every claim."""
        now = time.monotonic()
        shards = [s for s in shard_keys(ItemState.TODO) if self._empty_until.get(s, 0.0) <= now]
        random.shuffle(shards)
        for shard in shards:
            start = secrets.token_hex(8)
            found = self._query_ids(shard, ">=", start, CANDIDATES_PER_QUERY)
            if len(found) < CANDIDATES_PER_QUERY:
                found += self._query_ids(shard, "<", start, CANDIDATES_PER_QUERY - len(found))
            if found:
                random.shuffle(found)
                return found
            self._empty_until[shard] = now + self._empty_shard_ttl
        now_rank = expiry_rank(time.time())
        for shard in random.sample(shard_keys(ItemState.LOCKED), k=len(shard_keys(ItemState.LOCKED))):
            found = self._query_ids(shard, "<", now_rank, CANDIDATES_PER_QUERY)
            if found:
                return found
        return []

    def _query_ids(self, shard: str, op: str, rank: str, limit: int) -> list[str]:
        response = self.client.query(
            TableName=self.table,
            IndexName=STATE_INDEX.name,
            KeyConditionExpression=f"#s = :s AND #r {op} :r",
            ExpressionAttributeNames={"#s": Attr.STATE_SHARD, "#r": Attr.STATE_RANK, "#i": Attr.ITEM_ID},
            ExpressionAttributeValues={":s": {"S": shard}, ":r": {"S": rank}},
            ProjectionExpression="#i",
            Limit=limit,
        )
        return [row[Attr.ITEM_ID]["S"] for row in response.get("Items", [])]

    def _try_claim(self, item_id: str) -> tuple[Item, Lease] | None:
        """Claim one item. For a fresh item the claim also marks Task_0 running, which saves a
        write; if that was the only reason the claim failed, claim it plainly."""
        claimed, claimable = self._claim_once(item_id, mark_first=True)
        if claimed is None and claimable:
            claimed, _ = self._claim_once(item_id, mark_first=False)
        return claimed

    def _claim_once(self, item_id: str, mark_first: bool) -> tuple[tuple[Item, Lease] | None, bool]:
        now = time.time()
        lease = Lease(item_id, secrets.token_hex(16), now + self.lease_seconds)
        expr = (
            Expression()
            .set(Attr.STATE, ItemState.LOCKED.value)
            .set(Attr.LEASE_TOKEN, lease.token)
            .set(Attr.LEASE_EXPIRY, round(lease.expiry, 3))
            .set(Attr.INSTANCE_ID, self.owner)
            .set(Attr.LOCK_DATE, utc_now_iso())
            .set(Attr.STATE_SHARD, state_shard(ItemState.LOCKED, item_id))
            .set(Attr.STATE_RANK, expiry_rank(lease.expiry))
            .add(Attr.CLAIMS, 1)
            .when(
                "{a:lockID} = {todo} OR ({a:lockID} = {locked} AND {a:Lease_Expiry} < {now})",
                todo=ItemState.TODO.value,
                locked=ItemState.LOCKED.value,
                now=round(now, 3),
            )
        )
        if mark_first:
            first = (Attr.TASK_SCRIPT, subtask_key(0), SUBTASK_STATUS)
            expr.set(first, SubtaskStatus.RUNNING.value)
            expr.when("{a:" + ".".join(first) + "} = {todo}", todo=SubtaskStatus.TODO.value)
        try:
            response = self.client.update_item(
                TableName=self.table, Key=_key(item_id), ReturnValues="ALL_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD", **expr.request(),
            )
        except Exception as exc:
            if is_conditional_failure(exc):
                old = getattr(exc, "response", {}).get("Item")
                return None, bool(old) and _claimable(Item.from_row(old), now)
            raise
        return (Item.from_row(response["Attributes"]), lease), False

    # -- writes under a lease -------------------------------------------------------------

    def _fenced_update(self, lease: Lease, expr: Expression) -> None:
        expr.when("{a:Lease_Token} = {token}", token=lease.token)
        try:
            self.client.update_item(TableName=self.table, Key=_key(lease.item_id), **expr.request())
        except Exception as exc:
            if is_conditional_failure(exc):
                raise LeaseLost(lease.item_id) from exc
            raise

    def renew(self, lease: Lease) -> Lease:
        """Extend the lease (heartbeat). Raises LeaseLost if the item is no longer ours."""
        renewed = Lease(lease.item_id, lease.token, time.time() + self.lease_seconds)
        self._fenced_update(
            lease,
            Expression()
            .set(Attr.LEASE_EXPIRY, round(renewed.expiry, 3))
            .set(Attr.STATE_RANK, expiry_rank(renewed.expiry)),
        )
        return renewed

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
    ) -> None:
        """Write one sub-task's outcome; with ``final``, also end the item in that state."""
        expr = Expression()
        self._set_result(expr, result)
        if next_running:
            expr.set((Attr.TASK_SCRIPT, next_running, SUBTASK_STATUS), SubtaskStatus.RUNNING.value)
        if final is not None:
            self._finish(expr, lease.item_id, final)
        self._fenced_update(lease, expr)

    def finish(self, lease: Lease, final: ItemState, error_line: str | None = None,
               failed: Sequence[str] = ()) -> None:
        """End the item as done or failed (when its last result was already written);
        ``failed`` sub-tasks are marked failed on the way (no attempts left)."""
        expr = Expression()
        if error_line is not None:
            expr.set(Attr.LAST_ERROR, error_line)
        for key in failed:
            expr.set((Attr.TASK_SCRIPT, key, SUBTASK_STATUS), SubtaskStatus.FAILED.value)
        self._finish(expr, lease.item_id, final)
        self._fenced_update(lease, expr)

    def release(self, lease: Lease, interrupted: list[str]) -> None:
        """Give the item back as todo; finished sub-tasks are kept, interrupted ones rerun."""
        expr = Expression()
        for key in interrupted:
            expr.set((Attr.TASK_SCRIPT, key, SUBTASK_STATUS), SubtaskStatus.TODO.value)
        _to_todo(expr, lease.item_id)
        self._fenced_update(lease, expr)

    @staticmethod
    def _set_result(expr: Expression, result: SubtaskResult) -> None:
        base = (Attr.TASK_SCRIPT, result.key)
        expr.set((*base, SUBTASK_STATUS), result.status.value)
        expr.set((*base, SUBTASK_ATTEMPTS), result.attempts)
        if result.exit_code is not None:
            expr.set((*base, SUBTASK_EXIT_CODE), result.exit_code)
        expr.set((Attr.LOG, result.key), result.log)
        expr.set((Attr.LOG_SUMMARY, result.key), result.summary)
        if result.status is SubtaskStatus.DONE:
            expr.add(Attr.SUBTASKS_DONE, 1)
        elif result.error_line is not None:
            expr.set(Attr.LAST_ERROR, result.error_line)

    @staticmethod
    def _finish(expr: Expression, item_id: str, final: ItemState) -> None:
        date = utc_now_iso()
        expr.set(Attr.STATE, final.value)
        expr.set(Attr.STATE_SHARD, state_shard(final, item_id))
        expr.set(Attr.STATE_RANK, date)
        if final is ItemState.DONE:
            expr.set(Attr.DONE_DATE, date)
        expr.remove(Attr.LEASE_TOKEN).remove(Attr.LEASE_EXPIRY)

    # -- reads ----------------------------------------------------------------------------

    def get(self, item_id: str) -> Item | None:
        response = self.client.get_item(
            TableName=self.table, Key=_key(item_id), ConsistentRead=True
        )
        row = response.get("Item")
        return Item.from_row(row) if row else None

    def any_in_state(self, state: ItemState) -> bool:
        """Whether at least one item is in ``state`` (Limit 1 per shard; no Scan)."""
        for shard in shard_keys(state):
            response = self.client.query(
                TableName=self.table,
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

    def index_rows(self, state: ItemState, attributes: list[str]) -> Iterator[dict[str, Any]]:
        """The given attributes of every item in ``state`` (paginated Query per shard)."""
        for shard in shard_keys(state):
            yield from self._shard_rows(shard, attributes)

    def _shard_rows(self, shard: str, attributes: list[str]) -> Iterator[dict[str, Any]]:
        names = {f"#p{n}": name for n, name in enumerate(attributes)}
        for page in self.client.get_paginator("query").paginate(
            TableName=self.table,
            IndexName=STATE_INDEX.name,
            KeyConditionExpression="#s = :s",
            ExpressionAttributeNames={"#s": Attr.STATE_SHARD, **names},
            ExpressionAttributeValues={":s": {"S": shard}},
            ProjectionExpression=", ".join(names),
        ):
            yield from page.get("Items", [])


def _claimable(item: Item, now: float) -> bool:
    return item.state in (ItemState.TODO, ItemState.LOCKED) and not item.lease_live(now)


def _key(item_id: str) -> dict[str, Any]:
    return {Attr.ITEM_ID: {"S": item_id}}


def _to_todo(expr: Expression, item_id: str) -> None:
    """Turn ``expr`` into a return to todo: state index entry and lease cleared."""
    expr.set(Attr.STATE, ItemState.TODO.value)
    expr.set(Attr.STATE_SHARD, state_shard(ItemState.TODO, item_id))
    expr.set(Attr.STATE_RANK, secrets.token_hex(8))
    expr.remove(Attr.LEASE_TOKEN).remove(Attr.LEASE_EXPIRY)
