"""A sub-task's run record (``Log_Summary.<key>``), read in one place and tolerantly.

The worker writes the record (``Worker._result`` and ``worker_record.run_record``); the worker's
next attempt, the report, ``logs`` and the item's ``Earlier_Runs`` read it. Anyone who can write
the table can also write garbage into it, so every field is parsed here: a value of the wrong type
becomes the field's default, and the record says which attributes were malformed
(``problems``), so each reader can name them and go on instead of failing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

MAX_EARLIER_EXITS = 20  # exit codes of earlier attempts kept per sub-task


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


@dataclass(frozen=True)
class RunRecord:
    """The last run of one sub-task, as stored; ``problems`` names the malformed attributes."""

    exit_code: int | None = None
    attempt: int | None = None
    cpu_time: float = 0.0
    wall_time: float = 0.0
    log_length: int = 0
    peak_rss_kb: int = 0
    timed_out: bool = False
    log_location: str = ""
    started: str | None = None
    ended: str | None = None
    instance_id: str | None = None
    instance_type: str | None = None
    host: str | None = None
    worker_id: str | None = None
    cost_usd: float | None = None
    output_bytes: int = 0
    earlier_exits: tuple[int | None, ...] = ()
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
        return cls(
            exit_code=read.integer("ExitCode"),
            attempt=read.integer("Attempt"),
            cpu_time=read.number("CPU_Time") or 0.0,
            wall_time=read.number("Wall_Time") or 0.0,
            log_length=read.integer("Log_Length") or 0,
            peak_rss_kb=read.integer("Peak_RSS_KB") or 0,
            timed_out=read.flag("Timed_Out"),
            log_location=read.text("Log_Location") or "",
            started=read.text("Started"),
            ended=read.text("Ended"),
            instance_id=read.text("InstanceID"),
            instance_type=read.text("Instance_Type"),
            host=read.text("Host"),
            worker_id=read.text("Worker_ID"),
            cost_usd=read.number("Cost_USD"),
            output_bytes=read.integer("Output_Bytes") or 0,
            earlier_exits=read.exits("Earlier_Exits"),
            problems=tuple(read.problems),  # last: the reads above fill it
        )

    @property
    def ran(self) -> bool:
        """Whether the record says when the run started (records from before that field, and
        records of sub-tasks interrupted before their first result, do not)."""
        return self.started is not None

    def exits_so_far(self) -> list[int | None]:
        """The exit codes of this run and the ones before it, oldest first (at most
        MAX_EARLIER_EXITS): what the next attempt stores as its ``Earlier_Exits``."""
        return [*self.earlier_exits, self.exit_code][-MAX_EARLIER_EXITS:]


def run_records(log_summary: Mapping[str, Any], keys: list[str]) -> dict[str, RunRecord]:
    """The run record of each sub-task in ``keys`` that has one."""
    found = {key: RunRecord.from_map(log_summary.get(key), key) for key in keys}
    return {key: record for key, record in found.items() if record is not None}
