"""The one definition of the PyAnamo table: keys, indexes, attribute names and states.

The CLI's ``create-table`` and the CDK stack both build the table from this module, so the
two can never disagree. Attribute names in ``Attr`` are a public contract: users query them.
"""

from __future__ import annotations

import enum
import re
import zlib
from dataclasses import dataclass
from typing import Any


class ItemState(str, enum.Enum):
    """The state of an item, stored in ``lockID``."""

    TODO = "todo"
    LOCKED = "locked"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"  # by `pyanamo cancel`: claimable by no one until reset
    WAITING = "waiting"  # imported with dependencies (``After``) that are not all done: no claim sees it
    UPSTREAM_FAILED = "upstream_failed"  # an item it waits for ended failed or cancelled: it never ran

    @property
    def live(self) -> bool:
        """Will run (again) without anyone's help: a queue with a live item is not drained."""
        return self in LIVE_STATES

    @property
    def ended(self) -> bool:
        """Will not run again unless someone resets it."""
        return not self.live

    @property
    def claimable(self) -> bool:
        """A claim may take it (a locked item only once its lease has expired)."""
        return self in CLAIMABLE_STATES


# The item's lifecycle in one place: status, the backlog scaler, the worker's drain check and the
# admin commands read these instead of listing states themselves. A new state is added here and
# in the code that moves items into it (ARCHITECTURE.md draws the diagram).
LIVE_STATES: tuple[ItemState, ...] = (ItemState.TODO, ItemState.LOCKED, ItemState.WAITING)
CLAIMABLE_STATES: tuple[ItemState, ...] = (ItemState.TODO, ItemState.LOCKED)
IMPORTED_STATES: tuple[ItemState, ...] = (ItemState.TODO, ItemState.WAITING)  # waiting: with After
ENDED_STATES: tuple[ItemState, ...] = (ItemState.DONE, ItemState.FAILED, ItemState.CANCELLED,
                                       ItemState.UPSTREAM_FAILED)
# Where an upstream item's end leaves the items that wait for it (``dependencies``).
BLOCKING_STATES: tuple[ItemState, ...] = (ItemState.FAILED, ItemState.CANCELLED, ItemState.UPSTREAM_FAILED)
# Who moves an item from one state to another (``queue.TaskQueue`` makes every such write).
TRANSITIONS: dict[tuple[ItemState, ItemState], str] = {
    (ItemState.TODO, ItemState.LOCKED): "a worker's claim",
    (ItemState.LOCKED, ItemState.LOCKED): "a worker's claim of an expired lease (a reclaim)",
    (ItemState.LOCKED, ItemState.DONE): "the lease holder: every sub-task done",
    (ItemState.LOCKED, ItemState.FAILED): "the lease holder: a sub-task failed for good; a claim: the crash limit",
    (ItemState.LOCKED, ItemState.TODO): "the lease holder giving it back (stopping), or reset --expired",
    (ItemState.TODO, ItemState.FAILED): "a claim that finds the item malformed",
    (ItemState.FAILED, ItemState.TODO): "reset",
    (ItemState.DONE, ItemState.TODO): "reset --rerun",
    (ItemState.CANCELLED, ItemState.TODO): "reset",
    (ItemState.TODO, ItemState.CANCELLED): "cancel",
    (ItemState.LOCKED, ItemState.CANCELLED): "cancel (the holder stops within seconds)",
    (ItemState.WAITING, ItemState.TODO): "the release: the last item it waits for ended done",
    (ItemState.WAITING, ItemState.UPSTREAM_FAILED): "an item it waits for ended failed or cancelled",
    (ItemState.UPSTREAM_FAILED, ItemState.WAITING): "reset of the item that blocked it, or of itself",
    (ItemState.WAITING, ItemState.CANCELLED): "cancel",
}


class SubtaskStatus(str, enum.Enum):
    """The status of one sub-task, stored in ``TaskScript.<key>.Status``."""

    TODO = "todo"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"  # an earlier sub-task of an ``On_Failure: stop`` item failed: never ran


class Attr:
    """Attribute names of an item."""

    ITEM_ID = "itemID"
    TASK_ID = "taskID"
    STATE = "lockID"
    TASK_SCRIPT = "TaskScript"
    LOG = "Log"
    LOG_SUMMARY = "Log_Summary"
    INSTANCE_ID = "InstanceID"
    LOCK_DATE = "Lock_Date"
    DONE_DATE = "Done_Date"
    # Lease: a fresh random token per claim fences every later write; the expiry (epoch seconds)
    # tells other workers when the item may be reclaimed.
    LEASE_TOKEN = "Lease_Token"
    LEASE_EXPIRY = "Lease_Expiry"
    # Counters and the last error, kept on the item so `status` reads them from the state index.
    SUBTASK_COUNT = "Subtask_Count"
    SUBTASKS_DONE = "Subtasks_Done"
    LAST_ERROR = "Last_Error"
    CLAIMS = "Claims"
    # Claims that ended without their holder finishing (worker died, lease lost): counted when the
    # item is reclaimed, with the holder that left it; past --max-claims the item fails.
    ABANDONED = "Abandoned_Claims"
    LAST_HOLDER = "Last_Holder"
    # The lease tokens of those abandoned claims, and the tokens of holders that came back after
    # losing their lease (a paused worker, a VM paused or asleep, an outage): an abandoned claim
    # whose holder came back was no crash and does not count against --max-claims.
    ABANDONED_LEASES = "Abandoned_Leases"
    RETURNED_LEASES = "Returned_Leases"
    # Which worker process holds (or last held) the item: host and process, so several workers on
    # one host are told apart; InstanceID stays the instance (or host) for the instance index.
    WORKER_ID = "Worker_ID"
    # Records of earlier runs of an item that `reset --rerun` ran again (the newest last).
    EARLIER_RUNS = "Earlier_Runs"
    # One more on every write that changes what an item is (claims, results, ends, admin
    # commands; not lease renewals): an admin write applies only to the version it read.
    VERSION = "Version"
    # Workflows (``pyanamo.dependencies``): the item IDs an item was imported to wait for, those
    # not yet done (a string set, absent when empty), the items that wait for this one (a string
    # set: the release reads it, no Scan), the upstream item whose failure blocked it, and
    # ``stop`` when its first sub-task that fails for good ends it (the rest are skipped).
    IMPORTED_DATE = "Imported_Date"  # when the import wrote it: the report's queue wait
    AFTER = "After"
    WAITING_ON = "Waiting_On"
    DEPENDENTS = "Dependents"
    BLOCKED_BY = "Blocked_By"
    ON_FAILURE = "On_Failure"
    # State-index keys (see STATE_INDEX below).
    STATE_SHARD = "State_Shard"
    STATE_RANK = "State_Rank"


EARLIER_RUNS_KEPT = 3  # older records are dropped; Runs_Before counts them all
# Keys inside TaskScript.<key>, Log.<key> and Log_Summary.<key>.
SUBTASK_SCRIPT = "Script"
SUBTASK_STATUS = "Status"
SUBTASK_ATTEMPTS = "Attempts"
SUBTASK_EXIT_CODE = "ExitCode"
# The committed outputs of a done sub-task (``pyanamo.outputs.Manifest``): written in the same
# fenced write as its result, so only the attempt that held the lease is ever named.
SUBTASK_OUTPUTS = "Outputs"
SUBTASK_LABEL = "Label"  # the TaskArgs argument that made the sub-task (chr2): a name users know it by


@dataclass(frozen=True)
class Index:
    """A global secondary index: its name, keys and projected attributes."""

    name: str
    partition_key: str
    sort_key: str
    projection: tuple[str, ...] = ()  # empty means KEYS_ONLY


# Every state change moves an item between `<state>#<shard>` partitions of this index. Sharding
# spreads the writes of a large fleet over STATE_SHARDS partitions, and spreads claims too. The
# sort key is a random rank for todo items (claims start at a random point), the zero-padded lease
# expiry for locked items (expired leases sort first), and the done/failed date otherwise.
STATE_SHARDS = 16
STATE_INDEX = Index(
    name="state-index",
    partition_key=Attr.STATE_SHARD,
    sort_key=Attr.STATE_RANK,
    projection=(
        Attr.TASK_ID,
        Attr.INSTANCE_ID,
        Attr.LEASE_EXPIRY,
        Attr.SUBTASK_COUNT,
        Attr.SUBTASKS_DONE,
        Attr.LAST_ERROR,
    ),
)
# All items of one taskID (e.g. one sample).
TASK_INDEX = Index(name="task-index", partition_key=Attr.TASK_ID, sort_key=Attr.ITEM_ID)
# Items held by one instance: query InstanceID = X AND lockID = locked.
INSTANCE_INDEX = Index(name="instance-index", partition_key=Attr.INSTANCE_ID, sort_key=Attr.STATE)

# Worker records (``worker_record``) sit in this state-index partition: next to no state's shards,
# so claims, counts and resets never see them, and the run report finds them with one Query.
WORKERS_SHARD = "workers#00"

INDEXES: tuple[Index, ...] = (STATE_INDEX, TASK_INDEX, INSTANCE_INDEX)
PARTITION_KEY = Attr.ITEM_ID

# Every key attribute of the table and its indexes is a string.
KEY_ATTRIBUTES: tuple[str, ...] = tuple(
    dict.fromkeys([PARTITION_KEY, *(a for i in INDEXES for a in (i.partition_key, i.sort_key))])
)

# DynamoDB limits an item to 400 KB (attribute names and values, strings as UTF-8). PyAnamo plans
# every item to stay under ITEM_BUDGET_BYTES whatever its sub-tasks print: the import refuses an
# item whose scripts leave no room for their results, and the worker sizes the stored log tails
# from what is left (tail_budget).
ITEM_LIMIT_BYTES = 400 * 1024
ITEM_BUDGET_BYTES = 350_000
MAX_ITEM_ID_BYTES = 1024
MAX_SCRIPTS_BYTES = 200_000
SUBTASK_RECORD_BYTES = 1_100  # the most one sub-task's status, summary and error take, tails aside
SUBTASK_MANIFEST_BYTES = 640  # the most one sub-task's outputs manifest takes (a longer list is an object)
MIN_TAIL_BYTES = 64  # the least kept of one stream of one sub-task
LOG_TAIL_MAX_BYTES = 4096  # the most kept of one stream of one sub-task
LOG_TAIL_BUDGET_BYTES = 100_000  # all tails of one item together: each write costs the item's size


def tail_budget(scripts_bytes: int, subtasks: int) -> int:
    """Bytes of stdout (and as many of stderr) stored per sub-task of an item of ``subtasks``
    sub-tasks whose scripts take ``scripts_bytes``; below MIN_TAIL_BYTES the item does not fit."""
    room = (ITEM_BUDGET_BYTES - MAX_ITEM_ID_BYTES - scripts_bytes
            - subtasks * (SUBTASK_RECORD_BYTES + SUBTASK_MANIFEST_BYTES))
    streams = 2 * max(1, subtasks)
    return min(LOG_TAIL_MAX_BYTES, LOG_TAIL_BUDGET_BYTES // streams, room // streams)


def shard_of(item_id: str) -> int:
    """The item's fixed state-index shard (stable across processes and machines)."""
    return zlib.crc32(item_id.encode("utf-8")) % STATE_SHARDS


def state_shard(state: ItemState, item_id: str) -> str:
    return f"{state.value}#{shard_of(item_id):02d}"


def shard_keys(state: ItemState) -> list[str]:
    return [f"{state.value}#{n:02d}" for n in range(STATE_SHARDS)]


def expiry_rank(epoch_seconds: float) -> str:
    """A lease expiry as a sort key: zero-padded milliseconds sort like numbers."""
    return f"{int(epoch_seconds * 1000):015d}"


def subtask_key(n: int) -> str:
    return f"Task_{n}"


def subtask_order(key: str) -> tuple[int, str]:
    """Sort key for sub-task keys: Task_2 before Task_10."""
    prefix, _, number = key.rpartition("_")
    return (int(number), prefix) if number.isdigit() else (1 << 62, key)



def table_name_problem(name: str) -> str | None:
    """Why DynamoDB would refuse ``name`` as a table name, or None (moto accepts more)."""
    if not 3 <= len(name) <= 255:
        return f"table name {name[:60]!r} has {len(name)} characters; DynamoDB needs 3 to 255"
    bad = sorted({c for c in name if not re.fullmatch(r"[A-Za-z0-9_.-]", c)})
    if bad:
        return f"table name {name!r} has {''.join(bad)!r}; DynamoDB allows only letters, digits, '_', '-' and '.'"
    return None


def create_table_request(table_name: str) -> dict[str, Any]:
    """The CreateTable request for the CLI (the CDK stack reads INDEXES and KEY_ATTRIBUTES)."""
    return {
        "TableName": table_name,
        "BillingMode": "PAY_PER_REQUEST",
        "AttributeDefinitions": [
            {"AttributeName": name, "AttributeType": "S"} for name in KEY_ATTRIBUTES
        ],
        "KeySchema": [{"AttributeName": PARTITION_KEY, "KeyType": "HASH"}],
        "GlobalSecondaryIndexes": [
            {
                "IndexName": index.name,
                "KeySchema": [
                    {"AttributeName": index.partition_key, "KeyType": "HASH"},
                    {"AttributeName": index.sort_key, "KeyType": "RANGE"},
                ],
                "Projection": (
                    {"ProjectionType": "INCLUDE", "NonKeyAttributes": list(index.projection)}
                    if index.projection
                    else {"ProjectionType": "KEYS_ONLY"}
                ),
            }
            for index in INDEXES
        ],
    }
