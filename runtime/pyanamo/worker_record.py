"""What a worker records of itself and of every sub-task run, for the run report.

A sub-task run's record lives in ``Log_Summary.<key>`` of its item (the latest run in full;
earlier attempts by their exit codes). A worker's record is a row of its own in the task table,
``pyanamo-worker#<host>:<pid>#<start>``: written at start, touched with the heartbeats, closed at
exit. It has no ``lockID`` or ``taskID``, so no claim, count or reset ever sees it; it sits in
the state index's ``workers#00`` partition, where the report finds every worker with a Query.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from .accounting import Placement, subtask_cost
from .errors import AccessDenied
from .events import emit
from .model import iso, utc_now_iso
from .ports import WorkQueue
from .runner import Outcome
from .runs import MAX_EARLIER_EXITS, EarlierAttempt, RunRecord

WORKER_RECORD_PREFIX = "pyanamo-worker#"


@dataclass(frozen=True)
class Earlier:
    """What a sub-task's record keeps of the attempts before this one: every exit code (the
    latest MAX_EARLIER_EXITS) and when, how long and where the latest MAX_EARLIER_ATTEMPTS ran."""

    exits: tuple[int | None, ...] = ()
    attempts: tuple[EarlierAttempt, ...] = ()

    @classmethod
    def after(cls, record: RunRecord) -> Earlier:
        """The attempts before the one after ``record`` (``record`` holds those before it)."""
        return cls(tuple(record.exits_so_far()), tuple(record.attempts_so_far()))


def earlier_of(summary: Any, attempts: int, key: str = "") -> Earlier:
    """The attempts made before this claim, from the sub-task's stored record (malformed values
    read as unknown: ``runs.RunRecord``)."""
    record = RunRecord.from_map(summary, key)
    if record is None or attempts <= 0:
        return Earlier()
    return Earlier.after(record)


def run_record(outcome: Outcome, placement: Placement, worker_id: str, slots: int,
               earlier: Earlier, *, attempt: int | None = None, log_location: str = "",
               log_lines: int = 0, log_bytes: int = 0) -> RunRecord:
    """One run of a sub-task: how it ended, what it used, where and when it ran, and its share
    of the instance's price."""
    cost = subtask_cost(placement.price_per_hour, outcome.wall_time, slots)
    return RunRecord(
        exit_code=outcome.exit_code,
        attempt=attempt,
        cpu_time=round(outcome.cpu_time, 3),
        wall_time=round(outcome.wall_time, 3),
        log_length=log_lines,
        log_bytes=log_bytes,
        peak_rss_kb=outcome.peak_rss_kb,
        timed_out=outcome.timed_out,
        signal=outcome.signal,
        log_location=log_location,
        started=iso(outcome.started_at),
        ended=iso(outcome.started_at + outcome.wall_time),
        instance_id=placement.instance_id,
        instance_type=placement.instance_type,
        host=placement.host,
        worker_id=worker_id,
        cost_usd=None if cost is None else round(cost, 8),
        earlier_exits=earlier.exits[-MAX_EARLIER_EXITS:],
        earlier_attempts=earlier.attempts,
    )


@dataclass(frozen=True)
class WorkerCounters:
    items_done: int
    items_failed: int
    busy_seconds: float


class WorkerRecord:
    """The worker's own row. Its writes never stop the worker: a failure is a warning event."""

    def __init__(self, queue: WorkQueue, placement: Placement, slots: int) -> None:
        self.queue = queue
        self.placement = placement
        self.slots = slots
        self.started = time.time()
        self.key = f"{WORKER_RECORD_PREFIX}{queue.worker_id}#{int(self.started * 1000)}"
        self._denied: set[str] = set()

    def open(self) -> None:
        p = self.placement
        values: dict[str, Any] = {
            "Record_Type": "worker", "Worker_ID": self.queue.worker_id, "InstanceID": p.instance_id,
            "Host": p.host, "Instance_Type": p.instance_type, "Lifecycle": p.lifecycle, "Zone": p.zone,
            "Price_Source": p.price_source, "Slots": self.slots, "Started": iso(self.started),
            "Last_Seen": iso(self.started), "Items_Done": 0, "Items_Failed": 0, "Busy_Seconds": 0,
        }
        if p.price_per_hour is not None:
            values["Price_Per_Hour"] = p.price_per_hour
        self._write(self.queue.put_worker_record, values)

    def touch(self, counters: WorkerCounters) -> None:
        self._write(self.queue.update_worker_record, self._counters(counters))

    def close(self, reason: str, exit_code: int, counters: WorkerCounters, wait: float) -> None:
        """The last write, on a thread of its own joined for at most ``wait`` seconds: an exit is
        never held up by an endpoint that does not answer (the record then says when it was last
        seen)."""
        values = {**self._counters(counters), "Ended": utc_now_iso(), "Exit_Reason": reason, "Exit_Code": exit_code}
        writer = threading.Thread(target=self._write, args=(self.queue.update_worker_record, values), daemon=True)
        writer.start()
        writer.join(wait)

    @staticmethod
    def _counters(counters: WorkerCounters) -> dict[str, Any]:
        return {"Last_Seen": utc_now_iso(), "Items_Done": counters.items_done, "Items_Failed": counters.items_failed,
                "Busy_Seconds": counters.busy_seconds}

    def _write(self, write: Any, values: dict[str, Any]) -> None:
        try:
            write(self.key, values)
        except AccessDenied as exc:  # a role without a permission: said once, never swallowed
            creating = write == self.queue.put_worker_record
            action = "dynamodb:PutItem" if creating else "dynamodb:UpdateItem"
            if action not in self._denied:
                self._denied.add(action)
                emit("permission_denied", action=action, error=str(exc)[:200],
                     warning=f"the worker's record cannot be written ({action} refused): no instance-hours, cost "
                             "or utilization for this worker in status and report")
            if creating:  # keep the record where `status` reads it, and say why
                self._write(self.queue.upsert_worker_record,
                            {**values, "Warning": f"AccessDenied on {action}: {exc}"[:300]})
        except Exception as exc:  # noqa: BLE001 - the record is for the report, never worth a failed run
            emit("worker_record_failed", error=str(exc)[:200])
