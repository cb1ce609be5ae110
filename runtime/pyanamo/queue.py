"""The claimer: how a worker takes an item from the table.

A claim is one conditional UpdateItem (todo -> locked, or locked with an expired lease -> locked)
that stores a fresh lease token; every later write for the item is fenced by that token
(``gateway``). ``TaskQueue`` is the table gateway plus what only a claimer has: its owner (the
instance ID stored in the items it claims), the lease length, the crash limit, and the candidates
it found in the state index.
"""

from __future__ import annotations

import random
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from typing import Any

from .dependencies import block_dependents
from .errors import ConditionFailed, ItemRejected, MalformedItem
from .events import emit
from .expressions import Expression
from .gateway import (
    Lease,
    LeaseLost,
    TableGateway,
    changes,
    crashes,
    index_disagrees,
    is_state,
    item_key,
    lease_expired,
    lease_is,
    stored_state_is,
    subtask_is,
    to_final,
)
from .model import Item, utc_now_iso
from .schema import (
    INSTANCE_INDEX,
    STATE_INDEX,
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
CLAIM_TRIES = 8  # candidates one claim() tries before it reports nothing claimable
DEFAULT_MAX_CLAIMS = 3
UNKNOWN_HOLDER = "unknown"


@dataclass(frozen=True)
class Candidate:
    """An item found in the state index: todo, or (``reclaim``) locked with an expired lease."""

    item_id: str
    reclaim: bool = False
    lease: str | None = None  # a reclaim's expired lease token, read before the claim


class TaskQueue(TableGateway):
    """The table as a worker's queue: claims, renewals, what this instance holds. Thread-safe:
    slots of one worker share an instance."""

    def __init__(self, client: Any, table: str, *, owner: str = "", lease_seconds: float = 60,
                 max_claims: int = DEFAULT_MAX_CLAIMS, worker_id: str = ""):
        super().__init__(client, table)
        self.owner = owner
        self.worker_id = worker_id or owner
        self.lease_seconds = lease_seconds
        self.max_claims = max_claims
        self._candidates: deque[Candidate] = deque()
        self._fetched_at = 0.0
        self._empty_until: dict[str, float] = {}
        self._empty_shard_ttl = min(EMPTY_SHARD_SECONDS, lease_seconds / 4)
        self._lock = threading.Lock()
        self.failed_on_claim = 0  # items this queue failed as it claimed them (malformed, abandoned)

    # -- claiming -------------------------------------------------------------------------

    def claim(self) -> tuple[Item, Lease] | None:
        """Claim one todo (or expired) item, or return None when none is claimable now.

        Tries a bounded number of candidates, so a caller that is stopping gets control back."""
        for _ in range(CLAIM_TRIES):
            candidate = self._next_candidate()
            if candidate is None:
                return None
            claimed = self._try_claim(candidate)
            if claimed is not None:
                return claimed
            with self._lock:  # its neighbours in the index are probably contended too: look elsewhere
                self._candidates.clear()
        return None

    def expect_work(self) -> None:
        """Forget which todo shards were found empty: this worker just made items todo (it
        released items that waited for the one it ended), and should claim them at once."""
        with self._lock:
            self._empty_until.clear()

    def _next_candidate(self) -> Candidate | None:
        with self._lock:
            if self._candidates and time.monotonic() - self._fetched_at < CANDIDATE_MAX_AGE:
                return self._candidates.popleft()
            self._candidates.clear()
        found = self._find_candidates()
        with self._lock:
            self._candidates.extend(found)
            self._fetched_at = time.monotonic()
            return self._candidates.popleft() if self._candidates else None

    def _find_candidates(self) -> list[Candidate]:
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
                return [Candidate(i) for i in found]
            self._empty_until[shard] = now + self._empty_shard_ttl
        now_rank = expiry_rank(self.now())
        for shard in random.sample(shard_keys(ItemState.LOCKED), k=len(shard_keys(ItemState.LOCKED))):
            found = self._query_ids(shard, "<", now_rank, CANDIDATES_PER_QUERY)
            if found:
                return [Candidate(i, reclaim=True) for i in found]
        return []

    def _query_ids(self, shard: str, op: str, rank: str, limit: int) -> list[str]:
        response = self._call(
            "query",
            IndexName=STATE_INDEX.name,
            KeyConditionExpression=f"#s = :s AND #r {op} :r",
            ExpressionAttributeNames={"#s": Attr.STATE_SHARD, "#r": Attr.STATE_RANK, "#i": Attr.ITEM_ID},
            ExpressionAttributeValues={":s": {"S": shard}, ":r": {"S": rank}},
            ProjectionExpression="#i",
            Limit=limit,
        )
        return [row[Attr.ITEM_ID]["S"] for row in response.get("Items", [])]

    def _try_claim(self, candidate: Candidate) -> tuple[Item, Lease] | None:
        """Claim one item. For a fresh item the claim also marks Task_0 running, which saves a
        write; if that was the only reason the claim failed, claim it plainly."""
        if candidate.reclaim:  # which lease is abandoned: rare (a holder left), so one read is cheap
            row = self._read_row(candidate.item_id)
            if row is None:
                return None
            candidate = replace(candidate, lease=row.get(Attr.LEASE_TOKEN, {}).get("S"))
        now = self.now()
        try:
            return self._claim_once(candidate, now, mark_first=True)
        except ConditionFailed as failure:
            # Servers that omit the old item from the failure (dynalite) get a consistent read.
            old = failure.old or self._read_row(candidate.item_id)
        except ItemRejected:  # TaskScript is not a map of sub-tasks: claim it plainly, then fail it
            old = None
        else:
            return None
        if old is not None:
            try:
                item = Item.from_row(old)
            except MalformedItem as exc:
                self._fail_unclaimed(old, exc.reason)
                return None
            wanted = ItemState.LOCKED if candidate.reclaim else ItemState.TODO
            if index_disagrees(old) is not None:  # it would stay in the wrong index partition for ever
                self.fix_index(old)
                return None
            if item.state is not wanted or item.lease_live(now):
                return None  # taken or finished meanwhile
        try:
            return self._claim_once(candidate, now, mark_first=False)
        except ConditionFailed:
            return None
        except ItemRejected as exc:  # e.g. already at DynamoDB's size limit: it can never run
            row = old or self._read_row(candidate.item_id)
            if row is not None:
                self._fail_unclaimed(row, f"cannot be claimed: {exc}")
            return None

    def _claim_once(self, candidate: Candidate, now: float, mark_first: bool) -> tuple[Item, Lease] | None:
        """The claim itself; None if it succeeded but the item turned out unrunnable (then it
        is failed at once: malformed, or abandoned by too many workers)."""
        item_id = candidate.item_id
        lease = Lease(item_id, secrets.token_hex(16), now + self.lease_seconds)
        expr = (
            Expression()
            .set(Attr.STATE, ItemState.LOCKED.value)
            .set(Attr.LEASE_TOKEN, lease.token)
            .set(Attr.LEASE_EXPIRY, round(lease.expiry, 3))
            .set(Attr.INSTANCE_ID, self.owner)
            .set(Attr.WORKER_ID, self.worker_id)
            .set(Attr.LOCK_DATE, utc_now_iso())
            .set(Attr.STATE_SHARD, state_shard(ItemState.LOCKED, item_id))
            .set(Attr.STATE_RANK, expiry_rank(lease.expiry))
            .add(Attr.CLAIMS, 1)
        )
        changes(expr)
        if candidate.reclaim:  # the holder left without finishing: count it, its lease, and who it was
            lease_expired(expr, now).add(Attr.ABANDONED, 1)
            expr.set_from(Attr.LAST_HOLDER, Attr.INSTANCE_ID, UNKNOWN_HOLDER)
            lease_is(expr, candidate.lease)
            if candidate.lease is not None:
                expr.add(Attr.ABANDONED_LEASES, {candidate.lease})
        else:
            is_state(expr, ItemState.TODO)
        if mark_first:
            expr.set((Attr.TASK_SCRIPT, subtask_key(0), SUBTASK_STATUS), SubtaskStatus.RUNNING.value)
            subtask_is(expr, subtask_key(0), SubtaskStatus.TODO)
        response = self._call("update_item", Key=item_key(item_id), ReturnValues="ALL_NEW",
                              ReturnValuesOnConditionCheckFailure="ALL_OLD", **expr.request())
        row = response["Attributes"]
        try:
            item = Item.from_row(row)
        except MalformedItem as exc:
            self._end_unrunnable(lease, f"malformed item: {exc.reason}")
            return None
        abandoned = crashes(row)
        if candidate.reclaim and abandoned >= self.max_claims:
            holder = row.get(Attr.LAST_HOLDER, {}).get("S", UNKNOWN_HOLDER)
            self._end_unrunnable(lease, f"abandoned by {abandoned} workers (last: {holder}); "
                                        f"a sub-task may be killing its worker (out of memory?)")
            return None
        return item, lease

    def _end_unrunnable(self, lease: Lease, error: str) -> None:
        emit("item_failed", item=lease.item_id, reason=error)
        try:
            waiting = self._fenced_update(lease, to_final(Expression().set(Attr.LAST_ERROR, error),
                                                          lease.item_id, ItemState.FAILED), ending=True)
        except LeaseLost:
            return
        with self._lock:
            self.failed_on_claim += 1
        block_dependents(self, lease.item_id, waiting)  # they would wait for ever

    def _fail_unclaimed(self, row: dict[str, Any], reason: str) -> None:
        """Fail a malformed item that cannot even be claimed, if it is still as it was read."""
        item_id = row[Attr.ITEM_ID]["S"]
        error = f"malformed item: {reason}"
        expr = changes(to_final(Expression().set(Attr.LAST_ERROR, error), item_id, ItemState.FAILED))
        stored_state_is(expr, row.get(Attr.STATE, {}).get("S"))
        lease_is(expr, row.get(Attr.LEASE_TOKEN, {}).get("S"))
        try:
            self._call("update_item", Key=item_key(item_id), **expr.request())
        except (ConditionFailed, ItemRejected):
            return
        emit("item_failed", item=item_id, reason=error)
        with self._lock:
            self.failed_on_claim += 1

    def renew(self, lease: Lease) -> Lease:
        """Extend the lease (heartbeat). Raises LeaseLost if the item is no longer ours."""
        renewed = Lease(lease.item_id, lease.token, self.now() + self.lease_seconds)
        self._fenced_update(
            lease,
            Expression()
            .set(Attr.LEASE_EXPIRY, round(renewed.expiry, 3))
            .set(Attr.STATE_RANK, expiry_rank(renewed.expiry)),
            renewal=True,
        )
        return renewed

    def held_here(self) -> set[str]:
        """The IDs of the locked items this instance holds, by the instance index (which may
        lag a fresh claim by a moment: ``still_held`` settles a doubt)."""
        rows = self.query_index(INSTANCE_INDEX.name, (Attr.INSTANCE_ID, self.owner),
                                (Attr.STATE, ItemState.LOCKED.value))
        return {row[Attr.ITEM_ID]["S"] for row in rows}
