"""Items and sub-tasks as immutable values built from DynamoDB rows."""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

from .errors import MalformedItem
from .runs import RunRecord
from .schema import (
    EARLIER_RUNS_KEPT,
    SUBTASK_ATTEMPTS,
    SUBTASK_EXIT_CODE,
    SUBTASK_LABEL,
    SUBTASK_OUTPUTS,
    SUBTASK_SCRIPT,
    SUBTASK_STATUS,
    Attr,
    ItemState,
    SubtaskStatus,
    state_shard,
    subtask_order,
)

ITEM_STATES = {s.value for s in ItemState}
ON_FAILURE_CONTINUE = "continue"  # the default: every sub-task runs, whatever the others did
ON_FAILURE_STOP = "stop"
SUBTASK_STATUSES = {s.value for s in SubtaskStatus}
_deserializer = TypeDeserializer()
_serializer = TypeSerializer()


def from_dynamo(row: Mapping[str, Any]) -> dict[str, Any]:
    """A low-level DynamoDB row (``{"S": ...}`` values) as plain Python values, as boto3's
    ``TypeDeserializer`` gives them (numbers as Decimal, sets as sets)."""
    return _members(row)


def _members(values: Mapping[str, Any]) -> dict[str, Any]:
    """The values of a row or of a map: text and numbers decoded in place (most values of a
    run record are), everything else by ``_value``."""
    out = {}
    for key, value in values.items():
        if len(value) == 1:
            ((kind, inner),) = value.items()
            if kind == "S":
                out[key] = inner
                continue
            if kind == "N" and type(inner) is str:
                try:
                    out[key] = Decimal(inner)
                    continue
                except ArithmeticError:  # malformed: boto3's deserializer says why
                    pass
            elif kind == "M" and type(inner) is dict:
                out[key] = _members(inner)
                continue
        out[key] = _value(value)
    return out


def _value(value: Any) -> Any:
    """One attribute value: the common types here, in one dictionary look-up each (the report
    reads every item of a run: boto3's deserializer took a tenth of its time); the rest, and
    anything malformed, through boto3's."""
    if len(value) == 1:
        kind, inner = next(iter(value.items()))
        if kind == "S":
            return inner
        if kind == "N" and isinstance(inner, str):
            return _number(inner, value)
        if kind == "M" and (type(inner) is dict or isinstance(inner, Mapping)):  # the ABC check is slow
            return _members(inner)
        if kind == "L" and isinstance(inner, list):
            return [_value(v) for v in inner]
        if kind == "BOOL" and isinstance(inner, bool):
            return inner
    return _deserializer.deserialize(value)


def _number(text: str, value: Any) -> Any:
    try:
        return Decimal(text)
    except ArithmeticError:
        return _deserializer.deserialize(value)  # its error for a malformed number


def _decimals(value: Any) -> Any:
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, dict):
        return {k: _decimals(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_decimals(v) for v in value]
    return value


def to_dynamo(value: Any) -> dict[str, Any]:
    """One plain Python value as a low-level DynamoDB attribute value (floats as numbers)."""
    return dict(_serializer.serialize(_decimals(value)))


def iso(epoch: float) -> str:
    """Epoch seconds as ISO 8601 UTC with milliseconds (sorts as text)."""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def utc_now_iso() -> str:
    """The current time, as ``iso``."""
    return iso(time.time())


def _map(value: Any) -> Mapping[str, Any]:
    return value if type(value) is dict or isinstance(value, Mapping) else {}


def _text(value: Any) -> str | None:
    """An attribute that should be text; anything else is shown as written (never a crash)."""
    return value if value is None or isinstance(value, str) else str(value)


def _ids(value: Any) -> frozenset[str]:
    """A string set of item IDs (anything else reads as none)."""
    if isinstance(value, (set, frozenset, list, tuple)):
        return frozenset(v for v in value if isinstance(v, str))
    return frozenset()


def _int(value: Any, default: int = 0) -> int:
    return int(value) if isinstance(value, (int, Decimal)) else default


@dataclass(frozen=True)
class Subtask:
    key: str
    script: str
    status: SubtaskStatus = SubtaskStatus.TODO
    attempts: int = 0
    exit_code: int | None = None
    outputs: Mapping[str, Any] | None = None  # the committed attempt's manifest (pyanamo.outputs)
    label: str | None = None  # the TaskArgs argument that made it, if one did

    @property
    def name(self) -> str:
        """``Task_2 (chr2)`` for a sub-task made from an argument, else its key."""
        return f"{self.key} ({self.label})" if self.label else self.key

    @classmethod
    def from_map(cls, key: str, value: Any) -> Subtask:
        """Build from ``TaskScript.<key>``; ValueError says why it cannot be run as stored."""
        if not isinstance(value, Mapping):
            raise ValueError(f"sub-task {key} is not a map")
        script = value.get(SUBTASK_SCRIPT)
        if not isinstance(script, str) or not script.strip():
            raise ValueError(f"sub-task {key} has no {SUBTASK_SCRIPT}")
        status = value.get(SUBTASK_STATUS, SubtaskStatus.TODO.value)
        if status not in SUBTASK_STATUSES:
            raise ValueError(f"sub-task {key} has an unknown {SUBTASK_STATUS} {str(status)[:40]!r}")
        exit_code = value.get(SUBTASK_EXIT_CODE)
        outputs = value.get(SUBTASK_OUTPUTS)
        return cls(
            key=key,
            script=script,
            status=SubtaskStatus(status),
            attempts=_int(value.get(SUBTASK_ATTEMPTS)),
            exit_code=None if exit_code is None else _int(exit_code),
            outputs=outputs if isinstance(outputs, Mapping) else None,
            label=label if isinstance(label := value.get(SUBTASK_LABEL), str) and label else None,
        )

    def to_map(self) -> dict[str, Any]:
        value: dict[str, Any] = {
            SUBTASK_SCRIPT: self.script,
            SUBTASK_STATUS: self.status.value,
            SUBTASK_ATTEMPTS: self.attempts,
        }
        if self.exit_code is not None:
            value[SUBTASK_EXIT_CODE] = self.exit_code
        if self.outputs is not None:
            value[SUBTASK_OUTPUTS] = dict(self.outputs)
        if self.label:
            value[SUBTASK_LABEL] = self.label
        return value


@dataclass(frozen=True)
class Item:
    """One item of the queue: a taskID and its sub-tasks in order."""

    item_id: str
    task_id: str
    subtasks: tuple[Subtask, ...]
    state: ItemState = ItemState.TODO
    instance_id: str | None = None
    lease_token: str | None = None
    lease_expiry: float | None = None
    lock_date: str | None = None
    done_date: str | None = None
    last_error: str | None = None
    logs: Mapping[str, Any] = field(default_factory=dict)
    log_summary: Mapping[str, Any] = field(default_factory=dict)
    worker_id: str | None = None
    earlier_runs: tuple[Mapping[str, Any], ...] = ()
    version: int = 0  # ``Attr.VERSION``; 0: never changed since it was imported
    after: tuple[str, ...] = ()  # the item IDs it was imported to wait for (``dependencies``)
    waiting_on: frozenset[str] = frozenset()  # those of them not yet done
    dependents: frozenset[str] = frozenset()  # the items that wait for it
    blocked_by: str | None = None  # the upstream item that ended failed or cancelled
    on_failure: str = ON_FAILURE_CONTINUE  # ``stop``: the first sub-task that fails for good ends it
    imported_date: str | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Item:
        """Build from a low-level DynamoDB row; MalformedItem says why it cannot be run."""
        data = from_dynamo(row)
        item_id = str(data.get(Attr.ITEM_ID, ""))
        scripts = data.get(Attr.TASK_SCRIPT)
        state = data.get(Attr.STATE, ItemState.TODO.value)
        expiry = data.get(Attr.LEASE_EXPIRY)
        try:
            if state not in ITEM_STATES:
                raise ValueError(f"unknown {Attr.STATE} {str(state)[:40]!r}")
            if not isinstance(scripts, Mapping):
                raise ValueError(f"{Attr.TASK_SCRIPT} is not a map of sub-tasks")
            if not scripts:
                raise ValueError(f"{Attr.TASK_SCRIPT} has no sub-tasks")
            subtasks = tuple(Subtask.from_map(key, scripts[key]) for key in sorted(scripts, key=subtask_order))
            if expiry is not None and not isinstance(expiry, (int, Decimal)):
                raise ValueError(f"{Attr.LEASE_EXPIRY} is not a number")
            token = data.get(Attr.LEASE_TOKEN)
            if token is not None and not isinstance(token, str):
                raise ValueError(f"{Attr.LEASE_TOKEN} is not text")
        except ValueError as exc:
            raise MalformedItem(item_id, str(exc)) from None
        return cls(
            item_id=item_id,
            task_id=str(data.get(Attr.TASK_ID, "")),
            subtasks=subtasks,
            state=ItemState(state),
            instance_id=_text(data.get(Attr.INSTANCE_ID)),
            lease_token=token,
            lease_expiry=None if expiry is None else float(expiry),
            lock_date=_text(data.get(Attr.LOCK_DATE)),
            done_date=_text(data.get(Attr.DONE_DATE)),
            last_error=_text(data.get(Attr.LAST_ERROR)),
            logs={key: value for key, value in _map(data.get(Attr.LOG)).items() if isinstance(value, Mapping)},
            log_summary=_map(data.get(Attr.LOG_SUMMARY)),
            worker_id=_text(data.get(Attr.WORKER_ID)),
            earlier_runs=tuple(r for r in data.get(Attr.EARLIER_RUNS) or () if isinstance(r, Mapping)),
            version=_int(data.get(Attr.VERSION)),
            after=tuple(str(a) for a in data.get(Attr.AFTER) or () if isinstance(a, str)),
            waiting_on=_ids(data.get(Attr.WAITING_ON)),
            dependents=_ids(data.get(Attr.DEPENDENTS)),
            blocked_by=_text(data.get(Attr.BLOCKED_BY)),
            on_failure=ON_FAILURE_STOP if data.get(Attr.ON_FAILURE) == ON_FAILURE_STOP else ON_FAILURE_CONTINUE,
            imported_date=_text(data.get(Attr.IMPORTED_DATE)),
        )

    def new_row(self) -> dict[str, Any]:
        """The low-level row that imports this item as a fresh item: todo, or waiting while
        ``waiting_on`` names items not yet done."""
        state = ItemState.WAITING if self.waiting_on else ItemState.TODO
        values: dict[str, Any] = {
            Attr.ITEM_ID: self.item_id,
            Attr.TASK_ID: self.task_id,
            Attr.STATE: state.value,
            Attr.TASK_SCRIPT: {s.key: s.to_map() for s in self.subtasks},
            Attr.LOG: {},
            Attr.LOG_SUMMARY: {},
            Attr.SUBTASK_COUNT: len(self.subtasks),
            Attr.SUBTASKS_DONE: 0,
            Attr.CLAIMS: 0,
            Attr.STATE_SHARD: state_shard(state, self.item_id),
            Attr.STATE_RANK: secrets.token_hex(8),
            Attr.IMPORTED_DATE: utc_now_iso(),
        }
        if self.after:
            values[Attr.AFTER] = list(self.after)
        if self.waiting_on:
            values[Attr.WAITING_ON] = set(self.waiting_on)
        if self.dependents:
            values[Attr.DEPENDENTS] = set(self.dependents)
        if self.on_failure == ON_FAILURE_STOP:
            values[Attr.ON_FAILURE] = ON_FAILURE_STOP
        return {key: to_dynamo(value) for key, value in values.items()}

    def run_record(self) -> dict[str, Any]:
        """What this item's run was, compactly (kept in ``Earlier_Runs`` when it runs again):
        how it ended, where, and per sub-task its status, exit code, attempts, times and memory."""
        subtasks: dict[str, Any] = {}
        for s in self.subtasks:
            run = RunRecord.from_map(self.log_summary.get(s.key), s.key)
            record: dict[str, Any] = {"Status": s.status.value, "Attempts": s.attempts}
            if s.exit_code is not None:
                record["Exit"] = s.exit_code
            if run is not None and run.ran:
                record.update(Wall_Time=run.wall_time, CPU_Time=run.cpu_time, Peak_RSS_KB=run.peak_rss_kb)
            subtasks[s.key] = record
        return {
            "State": self.state.value,
            "Ended": self.done_date or utc_now_iso(),
            "InstanceID": self.instance_id or "",
            "Subtasks": subtasks,
        }

    def runs_with_this_one(self) -> tuple[Mapping[str, Any], ...]:
        """``Earlier_Runs`` for when this item runs again (a rerun, or an import that replaces
        it): the earlier runs and, if it ran, the run it has now; the last EARLIER_RUNS_KEPT."""
        ran = self.state is not ItemState.TODO or bool(self.log_summary)
        return (*self.earlier_runs, *((self.run_record(),) if ran else ()))[-EARLIER_RUNS_KEPT:]

    def lease_live(self, now: float) -> bool:
        """Whether a worker holds this item now (locked, lease not yet run out)."""
        return self.state is ItemState.LOCKED and (self.lease_expiry or 0.0) >= now

    @property
    def pending(self) -> tuple[Subtask, ...]:
        """Sub-tasks still to run (a `running` one was interrupted and runs again)."""
        return tuple(s for s in self.subtasks if s.status is not SubtaskStatus.DONE)
