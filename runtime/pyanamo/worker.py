"""The worker: claim items, run their sub-tasks, write results back, exit when drained.

Each of ``items`` slots runs a simple consumer loop (claim, work, repeat; back off exponentially
while nothing is claimable). The worker exits 0 once the queue is drained (no todo and no locked
item), or when only other workers' live items remain after ``linger`` seconds.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from .events import emit
from .lease import HeldItem, LeaseKeeper
from .logstore import LogStore
from .model import Item, Subtask
from .queue import Lease, LeaseLost, SubtaskResult, TaskQueue
from .runner import Outcome, SubtaskProcess, last_line, summarize_stream
from .schema import LOG_TAIL_BUDGET_BYTES, LOG_TAIL_MAX_BYTES, ItemState, SubtaskStatus

EXIT_DRAINED = 0  # also: wall time reached, or linger expired behind other workers' items
EXIT_ERROR = 1
EXIT_SIGNAL_BASE = 128  # stopped by a signal: 128 + its number, as a shell reports it


@dataclass(frozen=True)
class RetryPolicy:
    """How often a failing sub-task runs, and how long to wait between runs."""

    max_attempts: int = 2
    base_delay: float = 1.0
    max_delay: float = 60.0

    def allows(self, attempts: int) -> bool:
        return attempts < self.max_attempts

    def delay(self, attempts: int) -> float:
        return min(self.max_delay, self.base_delay * 2 ** max(0, attempts - 1))


class Backoff:
    """Exponential backoff with jitter for idle polling (reset after any claim)."""

    def __init__(self, initial: float = 0.2, cap: float = 10.0) -> None:
        self.initial, self.cap, self._next = initial, cap, initial

    def next(self) -> float:
        delay = self._next
        self._next = min(self.cap, self._next * 2)
        return delay * random.uniform(0.5, 1.0)

    def reset(self) -> None:
        self._next = self.initial


@dataclass(frozen=True)
class WorkerConfig:
    table: str
    items: int = 1
    nests: int = 1
    wall_time: float | None = None
    lease: float = 120.0
    max_attempts: int = 2
    retry_delay: float = 1.0
    timeout: float | None = None
    linger: float | None = None  # default: twice the lease
    outage_limit: float = 900.0  # exit 1 after the table was unreachable this long
    workdir: Path = Path(".")
    log_dir: Path = Path("pyanamo-logs")
    log_bucket: str | None = None

    @property
    def linger_seconds(self) -> float:
        return 2 * self.lease if self.linger is None else self.linger


class Worker:
    def __init__(self, queue: TaskQueue, config: WorkerConfig, logs: LogStore | None = None) -> None:
        self.queue = queue
        self.config = config
        self.logs = logs or LogStore(config.log_dir, config.table, config.log_bucket)
        self.retry = RetryPolicy(config.max_attempts, base_delay=config.retry_delay)
        self.keeper = LeaseKeeper(queue, config.lease)
        self.stopping = threading.Event()
        self.stop_reason: str | None = None
        self.stop_signal: int | None = None
        self.started = time.monotonic()
        self.items_done = 0
        self.failed = False
        self._count_lock = threading.Lock()

    # -- lifecycle ------------------------------------------------------------------------

    def run(self) -> int:
        """Run until drained (or stopped); returns the process exit code."""
        emit("worker_started", table=self.config.table, owner=self.queue.owner,
             items=self.config.items, nests=self.config.nests, lease=self.config.lease)
        self.keeper.start()
        slots = [
            threading.Thread(target=self._slot, name=f"slot-{n}", daemon=True)
            for n in range(self.config.items)
        ]
        for slot in slots:
            slot.start()
        for slot in slots:
            while slot.is_alive():
                slot.join(timeout=0.5)
        self.keeper.stop()
        emit("worker_exited", reason=self.stop_reason or "drained", items_done=self.items_done)
        if self.failed:
            return EXIT_ERROR
        if self.stop_signal is not None:
            return EXIT_SIGNAL_BASE + self.stop_signal
        return EXIT_DRAINED

    def stop(self, reason: str, signum: int | None = None) -> None:
        """Stop claiming, stop running sub-tasks; their items go back to todo."""
        if self.stopping.is_set():
            return
        self.stop_reason = reason
        self.stop_signal = signum
        self.stopping.set()
        emit("worker_stopping", reason=reason)
        for held in self.keeper.held():
            held.interrupt_all("stop")

    def install_signal_handlers(self) -> None:
        def handler(signum: int, _frame: Any) -> None:
            self.stop(signal.Signals(signum).name, signum)

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    # -- the consumer loop ----------------------------------------------------------------

    def _out_of_time(self) -> bool:
        wall = self.config.wall_time
        return wall is not None and time.monotonic() - self.started >= wall

    def _slot(self) -> None:
        # Polls while other workers' items are locked cost one or two queries (the drain check
        # stops at the first locked shard), so a short cap keeps the end of a run prompt.
        backoff = Backoff(cap=max(0.5, min(2.0, self.config.lease / 4)))
        idle_since: float | None = None
        failing_since: float | None = None
        while not self.stopping.is_set():
            if self._out_of_time():
                self.stop_reason = self.stop_reason or "wall_time"
                return
            try:
                claimed = self.queue.claim()
                if claimed is None and self._drained():
                    return
                failing_since = None
            except Exception as exc:  # outage, throttling past boto3's retries
                now = time.monotonic()
                failing_since = failing_since or now
                emit("queue_error", error=str(exc))
                if now - failing_since > self.config.outage_limit:
                    self.failed = True
                    self.stop_reason = "queue_unreachable"
                    return
                self.stopping.wait(backoff.next())
                continue
            if claimed is not None:
                idle_since = None
                backoff.reset()
                self._work(*claimed)
                continue
            now = time.monotonic()
            idle_since = idle_since or now
            if now - idle_since >= self.config.linger_seconds:
                self.stop_reason = self.stop_reason or "linger_expired"
                return
            self.stopping.wait(backoff.next())

    def _drained(self) -> bool:
        """No todo and no locked item left at all."""
        if self.queue.any_in_state(ItemState.LOCKED) or self.queue.any_in_state(ItemState.TODO):
            return False
        self.stop_reason = self.stop_reason or "drained"
        return True

    # -- one item -------------------------------------------------------------------------

    def _work(self, item: Item, lease: Lease) -> None:
        held = self.keeper.hold(lease)
        emit("item_claimed", item=item.item_id, pending=len(item.pending), subtasks=len(item.subtasks))
        try:
            self._run_item(item, held)
        except LeaseLost:
            held.abandon("write_refused")
        except Exception as exc:  # e.g. an outage outlasting boto3's retries: abandon, lease expires
            held.abandon(f"error: {exc}")
        finally:
            self.keeper.release(held)

    def _run_item(self, item: Item, held: HeldItem) -> None:
        pending = item.pending
        runnable = [s for s in pending if self.retry.allows(s.attempts)]
        exhausted = [s for s in pending if not self.retry.allows(s.attempts)]
        if not runnable:
            error = None
            if exhausted:
                s = exhausted[0]
                error = f"{s.key}: no attempts left ({s.attempts} of {self.retry.max_attempts})"
            self._write(held, self.queue.finish, ItemState.FAILED if exhausted else ItemState.DONE, error,
                        failed=[s.key for s in exhausted])
            self._finished(item, not exhausted)
            return
        if self.config.nests > 1 and len(runnable) > 1:
            self._run_parallel(item, held, runnable, ok=not exhausted)
        else:
            self._run_sequential(item, held, runnable, ok=not exhausted)

    def _run_sequential(self, item: Item, held: HeldItem, runnable: list[Subtask], ok: bool) -> None:
        if runnable[0].status is not SubtaskStatus.RUNNING:  # the claim marks a fresh item's first
            self._write(held, self.queue.mark_running, [runnable[0].key])
        for n, subtask in enumerate(runnable):
            result = self._attempts(item, held, subtask)
            if result is None:
                self._give_back(held, [subtask.key])
                return
            ok = ok and result.status is SubtaskStatus.DONE
            if n == len(runnable) - 1:
                self._write(held, self.queue.record, result,
                            final=ItemState.DONE if ok else ItemState.FAILED)
                self._finished(item, ok)
            elif self.stopping.is_set():
                self._write(held, self.queue.record, result)
                self._give_back(held, [])
                return
            else:
                self._write(held, self.queue.record, result, next_running=runnable[n + 1].key)

    def _run_parallel(self, item: Item, held: HeldItem, runnable: list[Subtask], ok: bool) -> None:
        def run_one(subtask: Subtask) -> SubtaskResult | None:
            if self.stopping.is_set() or held.lost.is_set():
                return None
            try:
                if subtask.status is not SubtaskStatus.RUNNING:
                    self._write(held, self.queue.mark_running, [subtask.key])
                result = self._attempts(item, held, subtask)
                if result is not None:
                    self._write(held, self.queue.record, result)
                return result
            except LeaseLost:
                held.abandon("write_refused")
                return None

        with ThreadPoolExecutor(max_workers=self.config.nests, thread_name_prefix="nest") as pool:
            results = list(pool.map(run_one, runnable))
        if held.lost.is_set():
            return
        interrupted = [s.key for s, r in zip(runnable, results) if r is None]
        if interrupted:
            self._give_back(held, interrupted)
            return
        ok = ok and all(r is not None and r.status is SubtaskStatus.DONE for r in results)
        self._write(held, self.queue.finish, ItemState.DONE if ok else ItemState.FAILED)
        self._finished(item, ok)

    def _finished(self, item: Item, ok: bool) -> None:
        with self._count_lock:
            self.items_done += 1
        emit("item_done" if ok else "item_failed", item=item.item_id)

    def _give_back(self, held: HeldItem, interrupted: list[str]) -> None:
        if held.lost.is_set():
            return
        self._write(held, self.queue.release, interrupted)
        emit("item_released", item=held.item_id, interrupted=interrupted, reason=self.stop_reason)

    def _write(self, held: HeldItem, write: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """A fenced write with the current lease; retried through outages until the lease
        is about to expire, then the item is abandoned (LeaseLost)."""
        delay = 0.2
        while True:
            if held.lost.is_set():
                raise LeaseLost(held.item_id)
            try:
                write(held.lease, *args, **kwargs)
                return
            except LeaseLost:
                raise
            except Exception as exc:
                emit("write_failed", item=held.item_id, error=str(exc))
                if self.keeper.expiring(held):
                    held.abandon("write_failed")
                    raise LeaseLost(held.item_id) from exc
                held.lost.wait(delay)
                delay = min(delay * 2, 5.0)

    # -- one sub-task ---------------------------------------------------------------------

    def _attempts(self, item: Item, held: HeldItem, subtask: Subtask) -> SubtaskResult | None:
        """Run a sub-task until it succeeds or its attempts are used; None if interrupted."""
        attempts = subtask.attempts
        while True:
            outcome, location = self._run_once(item, held, subtask, attempts + 1)
            if outcome.interrupted:  # its process group is stopped and reaped by now
                emit("subtask_interrupted", item=item.item_id, subtask=subtask.key,
                     reason="lease_lost" if held.lost.is_set() else self.stop_reason or "stop")
                return None
            attempts += 1
            result = self._result(item, subtask.key, outcome, attempts, location)
            if result.status is SubtaskStatus.DONE or not self.retry.allows(attempts):
                return result
            emit("subtask_retry", item=item.item_id, subtask=subtask.key, attempts=attempts,
                 exit_code=outcome.exit_code)
            self._write(held, self.queue.record, replace(result, status=SubtaskStatus.RUNNING))
            if self.stopping.wait(self.retry.delay(attempts)) or held.lost.is_set():
                return None

    def _run_once(self, item: Item, held: HeldItem, subtask: Subtask, attempt: int) -> tuple[Outcome, str]:
        folder = self.logs.folder(item.item_id, subtask.key, attempt)
        env = {
            **os.environ,
            "PYANAMO_TABLE": self.config.table,
            "PYANAMO_ITEM_ID": item.item_id,
            "PYANAMO_TASK_ID": item.task_id,
            "PYANAMO_SUBTASK": subtask.key,
            "PYANAMO_ATTEMPT": str(attempt),
        }
        process = SubtaskProcess(subtask.script, env=env, cwd=self.config.workdir,
                                 log_folder=folder, timeout=self.config.timeout)
        held.track(process)
        if self.stopping.is_set():
            process.interrupt("stop")
        try:
            outcome = process.run()
        finally:
            held.untrack(process)
        location = "" if outcome.interrupted else self.logs.publish(folder)
        return outcome, location

    def _result(self, item: Item, key: str, outcome: Outcome, attempts: int, location: str) -> SubtaskResult:
        tail = max(64, min(LOG_TAIL_MAX_BYTES, LOG_TAIL_BUDGET_BYTES // (2 * len(item.subtasks))))
        out = summarize_stream(outcome.stdout, tail)
        err = summarize_stream(outcome.stderr, tail)
        status = SubtaskStatus.DONE if outcome.succeeded else SubtaskStatus.FAILED
        error_line = None
        if not outcome.succeeded:
            if outcome.timed_out:
                reason = f"timed out after {self.config.timeout:g}s"
            else:
                reason = last_line(err.tail) or last_line(out.tail) or f"exit code {outcome.exit_code}"
            error_line = f"{key}: {reason}"
        summary = {
            "Log_Length": out.lines + err.lines,
            "Bytes": out.size + err.size,
            "CPU_Time": round(outcome.cpu_time, 3),
            "Wall_Time": round(outcome.wall_time, 3),
            "ExitCode": outcome.exit_code,
            "Timed_Out": outcome.timed_out,
            "Attempt": attempts,
            "Log_Location": location,
        }
        emit("subtask_finished", item=item.item_id, subtask=key, exit_code=outcome.exit_code,
             cpu=summary["CPU_Time"], wall=summary["Wall_Time"])
        return SubtaskResult(
            key=key,
            status=status,
            attempts=attempts,
            exit_code=outcome.exit_code,
            log={"stdout": out.tail, "stderr": err.tail},
            summary=summary,
            error_line=error_line,
        )
