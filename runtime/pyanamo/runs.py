"""A sub-task's run record (``Log_Summary.<key>``): defined, written and read in one place.

The worker fills the record (``worker_record.run_record``); the worker's next attempt, the
report, ``logs`` and the item's ``Earlier_Runs`` read it. Anyone who can write
the table can also write garbage into it, so every field is parsed here: a value of the wrong type
becomes the field's default, and the record says which attributes were malformed
(``problems``), so each reader can name them and go on instead of failing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from .accounting import parse_time

MAX_EARLIER_EXITS = 20  # exit codes of earlier attempts kept per sub-task
MAX_EARLIER_ATTEMPTS = 3  # when, how long and where, of the latest earlier attempts (the report's bars)


@dataclass(frozen=True)
class EarlierAttempt:
    """An attempt before the latest one of a sub-task (a failure that was retried), as much as
    the run report draws of it: stored as ``[started (epoch s), wall s, exit code or null,
    worker]`` in ``Earlier_Attempts``, the worker ``""`` when it is the record's own (retries
    run in the same claim): about 25 bytes, at most 90."""

    started: float
    wall_time: float
    exit_code: int | None
    worker_id: str

    def to_list(self, own_worker: str | None) -> list[Any]:
        worker = "" if self.worker_id == own_worker else self.worker_id
        return [round(self.started, 1), round(self.wall_time, 1), self.exit_code, worker]


class _Reader:
    """Reads the fields of one stored map, remembering which ones were malformed."""

    def __init__(self, value: Mapping[str, Any], where: str) -> None:
        self.value = value
        self.where = where
        self.problems: list[str] = []

    def _bad(self, name: str, what: str) -> None:
        self.problems.append(f"{self.where}.{name} is not {what}")

    def number(self, name: str) -> float | None:
        raw = self.value.get(name)
        if raw is None:
            return None
        if isinstance(raw, bool) or not isinstance(raw, (int, float, Decimal)):
            self._bad(name, "a number")
            return None
        return float(raw)

    def integer(self, name: str) -> int | None:
        found = self.number(name)
        if found is None:
            return None
        if found != int(found):
            self._bad(name, "a whole number")
            return None
        return int(found)

    def text(self, name: str) -> str | None:
        raw = self.value.get(name)
        if raw is None or isinstance(raw, str):
            return raw
        self._bad(name, "text")
        return None

    def flag(self, name: str) -> bool:
        raw = self.value.get(name)
        if raw is None or isinstance(raw, bool):
            return bool(raw)
        self._bad(name, "true or false")
        return False

    def exits(self, name: str) -> tuple[int | None, ...]:
        raw = self.value.get(name)
        if raw is None:
            return ()
        if not isinstance(raw, (list, tuple)):
            self._bad(name, "a list")
            return ()
        found: list[int | None] = []
        for code in raw:
            if code is None:
                found.append(None)
            elif isinstance(code, (int, Decimal)) and not isinstance(code, bool) and code == int(code):
                found.append(int(code))
            else:
                self._bad(name, "a list of exit codes")
                found.append(None)
        return tuple(found)

    def attempts(self, name: str) -> tuple[EarlierAttempt, ...]:
        raw = self.value.get(name)
        if raw is None:
            return ()
        found = [_attempt(entry) for entry in raw] if isinstance(raw, (list, tuple)) else [None]
        if any(attempt is None for attempt in found):
            self._bad(name, "a list of [started, wall time, exit code, worker]")
            return ()
        return tuple(a for a in found if a is not None)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, Decimal)) and not isinstance(value, bool)


def _attempt(entry: Any) -> EarlierAttempt | None:
    """One stored earlier attempt, or None if it is not ``[started, wall, exit code or null, worker]``."""
    if not isinstance(entry, (list, tuple)) or len(entry) != 4:
        return None
    started, wall, code, worker = entry
    if not (_is_number(started) and _is_number(wall) and isinstance(worker, str)):
        return None
    if code is not None and not (_is_number(code) and code == int(code)):
        return None
    return EarlierAttempt(float(started), float(wall), None if code is None else int(code), worker)


@dataclass(frozen=True)
class RunRecord:
    """One run of one sub-task, as stored in ``Log_Summary.<key>``: the one definition of the
    record. The worker fills it (``worker_record.run_record``), ``to_map`` stores it, ``from_map``
    reads it back for the worker's next attempt, the report and its trace, ``logs`` and
    ``Earlier_Runs``. A new field is a line in ``FIELDS`` and an attribute here, plus the place
    that fills it. ``problems`` names the malformed attributes of a record read back."""

    exit_code: int | None = None
    attempt: int | None = None
    cpu_time: float = 0.0
    wall_time: float = 0.0
    log_length: int = 0  # lines of stdout and stderr
    log_bytes: int = 0
    peak_rss_kb: int = 0
    timed_out: bool = False
    signal: int | None = None  # the signal that ended it, if one did
    log_location: str = ""
    started: str | None = None
    ended: str | None = None
    instance_id: str | None = None
    instance_type: str | None = None
    host: str | None = None
    worker_id: str | None = None
    cost_usd: float | None = None  # its share of the instance's price (None: price unknown)
    output_files: int | None = None  # committed outputs (None: it committed none)
    output_bytes: int | None = None
    earlier_exits: tuple[int | None, ...] = ()
    earlier_attempts: tuple[EarlierAttempt, ...] = ()  # the latest MAX_EARLIER_ATTEMPTS of them
    problems: tuple[str, ...] = ()

    @classmethod
    def from_map(cls, value: Any, key: str) -> RunRecord | None:
        """The record stored for sub-task ``key``; None if it has none (it never ran)."""
        if value is None:
            return None
        where = f"Log_Summary.{key}"
        if not isinstance(value, Mapping):
            return cls(problems=(f"{where} is not a map",))
        read = _Reader(value, where)
        found: dict[str, Any] = {}
        for stored, raw in value.items():  # the fields stored (absent ones keep their defaults)
            spec = _BY_STORED.get(stored)
            if spec is None:
                continue
            name, kind = spec
            # the usual types at once (a report reads 100,000 records); the rest, and anything
            # malformed, through the reader, which names the problem
            if kind == "text" and type(raw) is str:
                found[name] = raw
            elif kind == "number" and type(raw) is Decimal:
                found[name] = float(raw)
            elif kind == "integer" and type(raw) is Decimal and (whole := int(raw)) == raw:
                found[name] = whole
            else:
                found[name] = getattr(read, kind)(stored)
        if found.get("earlier_attempts"):  # "": the record's own worker
            found["earlier_attempts"] = tuple(
                a if a.worker_id else dataclasses.replace(a, worker_id=found.get("worker_id") or "?")
                for a in found["earlier_attempts"])
        return cls(**{name: v for name, v in found.items() if v is not None}, problems=tuple(read.problems))

    def to_map(self) -> dict[str, Any]:
        """The stored form (fields without a value are left out)."""
        stored: dict[str, Any] = {}
        for name, attribute, _ in FIELDS:
            value = getattr(self, name)
            if isinstance(value, tuple):
                value = [v.to_list(self.worker_id) if isinstance(v, EarlierAttempt) else v for v in value]
                if not value and name == "earlier_attempts":
                    continue  # most sub-tasks never retry: no empty list in every record
            if value is not None:
                stored[attribute] = value
        return stored

    @property
    def ran(self) -> bool:
        """Whether the record says when the run started (records from before that field, and
        records of sub-tasks interrupted before their first result, do not)."""
        return self.started is not None

    def exits_so_far(self) -> list[int | None]:
        """The exit codes of this run and the ones before it, oldest first (at most
        MAX_EARLIER_EXITS): what the next attempt stores as its ``Earlier_Exits``."""
        return [*self.earlier_exits, self.exit_code][-MAX_EARLIER_EXITS:]

    def attempts_so_far(self) -> list[EarlierAttempt]:
        """This run and the attempts before it, oldest first (at most MAX_EARLIER_ATTEMPTS): what
        the next attempt stores as its ``Earlier_Attempts``."""
        started = parse_time(self.started) if self.started else None
        this = [] if started is None else [EarlierAttempt(started, self.wall_time, self.exit_code,
                                                          self.worker_id or "?")]
        return [*self.earlier_attempts, *this][-MAX_EARLIER_ATTEMPTS:]


# (attribute, stored name, how it is read): the stored names are a public contract (users query them)
FIELDS: tuple[tuple[str, str, str], ...] = (
    ("exit_code", "ExitCode", "integer"),
    ("attempt", "Attempt", "integer"),
    ("cpu_time", "CPU_Time", "number"),
    ("wall_time", "Wall_Time", "number"),
    ("log_length", "Log_Length", "integer"),
    ("log_bytes", "Bytes", "integer"),
    ("peak_rss_kb", "Peak_RSS_KB", "integer"),
    ("timed_out", "Timed_Out", "flag"),
    ("signal", "Signal", "integer"),
    ("log_location", "Log_Location", "text"),
    ("started", "Started", "text"),
    ("ended", "Ended", "text"),
    ("instance_id", "InstanceID", "text"),
    ("instance_type", "Instance_Type", "text"),
    ("host", "Host", "text"),
    ("worker_id", "Worker_ID", "text"),
    ("cost_usd", "Cost_USD", "number"),
    ("output_files", "Output_Files", "integer"),
    ("output_bytes", "Output_Bytes", "integer"),
    ("earlier_exits", "Earlier_Exits", "exits"),
    ("earlier_attempts", "Earlier_Attempts", "attempts"),
)

_BY_STORED = {stored: (name, kind) for name, stored, kind in FIELDS}


def run_records(log_summary: Mapping[str, Any], keys: list[str]) -> dict[str, RunRecord]:
    """The run record of each sub-task in ``keys`` that has one."""
    found = {key: RunRecord.from_map(log_summary.get(key), key) for key in keys}
    return {key: record for key, record in found.items() if record is not None}
