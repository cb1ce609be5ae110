"""The worker: claim items, run their sub-tasks, write results back, exit when drained.

Each of ``items`` slots runs a consumer loop that reads top-down: claim (or wait while nothing is
claimable) -> run the item -> record. Whether to stop, and why, is decided in one place, the
``StopPolicy``: wall time, linger behind other workers' items, an outage past its limit, a
machine that cannot run sub-tasks, a signal.

Exit statuses (documented in the README): 0 drained and every item this worker finished is done;
3 drained, but some items it finished failed; 1 it could not go on (table unreachable past
``--outage-limit``, this machine cannot run sub-tasks, an internal error); 128 + N stopped by
signal N (SIGTERM, or a Spot interruption notice: 143).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .accounting import Placement, local_placement
from .aws import Endpoint, aws_client
from .cgroups import CgroupParent
from .dependencies import block_dependents, reconcile, release_dependents
from .errors import BOTO_ERRORS, EXIT_FAILED_ITEMS, ItemRejected, QueueError
from .events import emit
from .gateway import Lease, LeaseLost, SubtaskResult
from .launcher import Launch, Launcher, SupervisedLauncher
from .lease import HeldItem, LeaseKeeper
from .logstore import LogStore
from .model import ON_FAILURE_STOP, Item, Subtask
from .outputs import Manifest, OutputError, OutputStore, attempt_id, attempt_path, store_for, store_of_location
from .ports import WorkQueue
from .runner import (
    KILL_GRACE_SECONDS,
    SIGNAL_EXIT_BASE,
    LocalFailure,
    Outcome,
    last_line,
    safe_name,
    summarize_stream,
)
from .sandbox import JobCredentials, TaskUser, subtask_environment
from .schema import CLAIMABLE_STATES, MIN_TAIL_BYTES, ItemState, SubtaskStatus, tail_budget
from .worker_record import Earlier, WorkerCounters, WorkerRecord, earlier_of, run_record

EXIT_DRAINED = 0  # also: wall time reached, or linger expired behind other workers' items
EXIT_ERROR = 1
MAX_LOCAL_FAILURES = 3  # consecutive sub-tasks this machine could not start before the worker exits
STOP_MARGIN_SECONDS = 4.0  # after a stop request: the kill grace and this, then leave (exit within 10 s)


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
    placement: Placement | None = None  # where it runs and the price; None: this host, price 0
    outputs: str = "pyanamo-outputs"  # the committed outputs' store: a folder or s3://bucket/prefix
    max_output_size: int | None = None  # bytes per attempt; more fails the attempt
    run_as: str | None = None  # run sub-tasks as this user (the worker runs as root)
    job_role: str | None = None  # sub-tasks get this role's credentials, none of the worker's

    @property
    def slots(self) -> int:
        """Sub-tasks this worker may run at once: they share the instance (and its price)."""
        return self.items * self.nests

    @property
    def linger_seconds(self) -> float:
        return 2 * self.lease if self.linger is None else self.linger


class StopPolicy:
    """When the worker stops, and why: every decision and the one stop reason live here.

    ``clock`` is injectable so the decisions can be tested without waiting."""

    def __init__(self, config: WorkerConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self.started = clock()
        self.event = threading.Event()
        self.reason: str | None = None
        self.detail: str | None = None
        self.signal: int | None = None
        self.error = False
        self.deadline: float | None = None
        self._local_failures = 0
        self._lock = threading.Lock()

    @property
    def stopping(self) -> bool:
        return self.event.is_set()

    def stop(self, reason: str, *, signum: int | None = None, error: bool = False,
             detail: str | None = None) -> bool:
        """Record the stop (the first reason wins); True if this call stopped the worker."""
        with self._lock:
            if self.reason is not None:
                return False
            self.reason, self.signal, self.error, self.detail = reason, signum, error, detail
            self.deadline = self.clock() + KILL_GRACE_SECONDS + STOP_MARGIN_SECONDS
        self.event.set()
        return True

    def past_deadline(self) -> bool:
        """A stop was requested longer ago than the kill grace and the margin: give up waiting."""
        return self.deadline is not None and self.clock() >= self.deadline

    def time_to_deadline(self, default: float) -> float:
        """Seconds left before the stop deadline (``default`` when no stop was requested)."""
        return default if self.deadline is None else max(0.0, self.deadline - self.clock())

    def out_of_time(self) -> bool:
        wall = self.config.wall_time
        return wall is not None and self.clock() - self.started >= wall and self.stop("wall_time")

    def lingered(self, idle_since: float) -> bool:
        """Nothing claimable since ``idle_since``, only other workers' live items left."""
        return self.clock() - idle_since >= self.config.linger_seconds and self.stop("linger_expired")

    def unreachable(self, failing_since: float, error: str) -> bool:
        return (self.clock() - failing_since > self.config.outage_limit
                and self.stop("queue_unreachable", error=True, detail=error))

    def drained(self) -> None:
        self.stop("drained")

    def local_failure(self, error: str) -> int:
        """A sub-task could not be started here; the worker stops after a few in a row.
        Returns how many in a row so far."""
        with self._lock:
            self._local_failures += 1
            count = self._local_failures
        if count >= MAX_LOCAL_FAILURES:
            self.stop("cannot_run_subtasks", error=True, detail=error)
        return count

    def local_backoff(self) -> float:
        """How long a slot waits before its next claim: 0, or 2, 4, ... s after local failures."""
        with self._lock:
            count = self._local_failures
        return 0.0 if count == 0 else min(30.0, 2.0 ** count)

    def local_success(self) -> None:
        with self._lock:
            self._local_failures = 0

    def exit_code(self, items_failed: int) -> int:
        if self.error:
            return EXIT_ERROR
        if self.signal is not None:
            return SIGNAL_EXIT_BASE + self.signal
        return EXIT_FAILED_ITEMS if items_failed else EXIT_DRAINED


class Worker:
    def __init__(self, queue: WorkQueue, config: WorkerConfig, logs: LogStore | None = None,
                 launcher: Launcher | None = None) -> None:
        self.queue = queue
        self.launcher: Launcher = launcher or SupervisedLauncher(CgroupParent.find())
        self.config = config
        self.logs = logs or LogStore(config.log_dir, config.table, config.log_bucket)
        self.logs.private()
        self.retry = RetryPolicy(config.max_attempts, base_delay=config.retry_delay)
        self.keeper = LeaseKeeper(queue, config.lease)
        self.policy = StopPolicy(config)
        self.items_done = 0
        self.items_failed = 0
        self.busy_seconds = 0.0
        self._count_lock = threading.Lock()
        self.placement = config.placement or local_placement(queue.owner)
        self.record = WorkerRecord(queue, self.placement, config.slots)
        self.outputs: OutputStore = store_for(config.outputs)
        self.scratch = config.workdir / ".pyanamo"  # attempts' output folders, items' outputs
        self.task_user = TaskUser.named(config.run_as) if config.run_as else None
        self.job = (JobCredentials(config.job_role, lambda: aws_client("sts", Endpoint()),
                                   f"pyanamo-{queue.worker_id}") if config.job_role else None)
        self._staged: dict[tuple[str, str], tuple[Manifest, Path]] = {}

    # -- lifecycle ------------------------------------------------------------------------

    def run(self) -> int:
        """Run until drained (or stopped); returns the process exit code."""
        emit("worker_started", table=self.config.table, owner=self.queue.owner, worker=self.queue.worker_id,
             items=self.config.items, nests=self.config.nests, lease=self.config.lease,
             instance_type=self.placement.instance_type, lifecycle=self.placement.lifecycle,
             price_per_hour=self.placement.price_per_hour, price_source=self.placement.price_source)
        self.record.open()
        heartbeat = threading.Thread(target=self._heartbeat, name="worker-record", daemon=True)
        heartbeat.start()
        self.keeper.start()
        slots = [
            threading.Thread(target=self._slot_guarded, name=f"slot-{n}", daemon=True)
            for n in range(self.config.items)
        ]
        for slot in slots:
            slot.start()
        for slot in slots:
            while slot.is_alive():
                slot.join(timeout=0.5)
                if self.policy.past_deadline():  # a request stuck in an outage: leave anyway;
                    emit("worker_stop_overdue")  # the supervisors kill the sub-tasks as we exit
                    break
        self.keeper.stop()
        self.items_failed += self.queue.failed_on_claim
        code = self.policy.exit_code(self.items_failed)
        reason = self.policy.reason or "drained"
        self.record.close(reason, code, self._counters(), wait=max(0.5, self.policy.time_to_deadline(2.0)))
        emit("worker_exited", reason=reason, items_done=self.items_done, items_failed=self.items_failed)
        return code

    def _counters(self) -> WorkerCounters:
        with self._count_lock:
            return WorkerCounters(self.items_done, self.items_failed, round(self.busy_seconds, 3))

    def _heartbeat(self) -> None:
        """Keep the worker's record's last-seen time and counters fresh (every third of the
        lease, as the leases), so a worker that dies leaves a record that says until when."""
        while not self.policy.event.wait(max(1.0, self.config.lease / 3)):
            self.record.touch(self._counters())

    def stop(self, reason: str, signum: int | None = None) -> None:
        """Stop claiming, stop running sub-tasks; their items go back to todo."""
        if self.policy.stop(reason, signum=signum):
            emit("worker_stopping", reason=reason)
            for held in self.keeper.held():
                held.interrupt_all("stop")

    def install_signal_handlers(self) -> None:
        def handler(signum: int, _frame: Any) -> None:
            self.stop(signal.Signals(signum).name, signum)

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    # -- the consumer loop ----------------------------------------------------------------

    def _slot_guarded(self) -> None:
        """A slot's thread: a bug must stop the worker with an error, not end a slot silently."""
        try:
            self._slot()
        except BaseException as exc:  # noqa: BLE001 - the thread's top level
            emit("worker_crashed", error=repr(exc), traceback=traceback.format_exc())
            if self.policy.stop("internal_error", error=True, detail=repr(exc)):
                for held in self.keeper.held():
                    held.interrupt_all("stop")

    def _slot(self) -> None:
        # Polls while other workers' items are locked cost one or two queries (the drain check
        # stops at the first locked shard), so a short cap keeps the end of a run prompt.
        idle = Backoff(cap=max(0.5, min(2.0, self.config.lease / 4)))
        outage = Backoff(cap=10.0)
        idle_since: float | None = None
        failing_since: float | None = None
        while not self.policy.stopping and not self.policy.out_of_time():
            try:
                claimed = self.queue.claim()
                if claimed is None and self._drained():
                    self.policy.drained()
                    return
            except QueueError as exc:  # outage, throttling past boto3's retries
                failing_since = failing_since or self.policy.clock()
                emit("queue_error", error=str(exc))
                if self.policy.unreachable(failing_since, str(exc)):
                    return
                self.policy.event.wait(outage.next())
                continue
            failing_since = None
            outage.reset()
            if claimed is None:
                idle_since = idle_since or self.policy.clock()
                if self.policy.lingered(idle_since):
                    return
                self.policy.event.wait(idle.next())
                continue
            idle_since = None
            idle.reset()
            self._work(*claimed)
            self.policy.event.wait(self.policy.local_backoff())  # 0 unless sub-tasks cannot start here

    def _drained(self) -> bool:
        """No item left that can run: none todo or locked, and the waiting ones wait for items
        that will not end (missing from the table, or waiting themselves). Before it says so it
        settles the waiting items (``dependencies.reconcile``): a release its worker did not live
        to make is made here."""
        if any(self.queue.any_in_state(state) for state in CLAIMABLE_STATES):
            return False
        if not self.queue.any_in_state(ItemState.WAITING):
            # Read again: an item released (waiting -> todo) by another slot between the two reads
            # is in neither; it cannot go back to waiting, so this read finds it.
            return not any(self.queue.any_in_state(state) for state in CLAIMABLE_STATES)
        for _ in range(2):
            # The second settle: an upstream still locked when the first read it may have ended
            # before the look for claimable items. An item released by another slot or worker a
            # moment ago (todo when read, though the index still lists it as waiting) keeps this
            # worker too: the claim finds it once the index catches up.
            settled = reconcile(self.queue)
            if settled.released or settled.moved:
                self.queue.expect_work()
                return False
            if any(self.queue.any_in_state(state) for state in CLAIMABLE_STATES):
                return False
        if settled.waiting:
            missing = sorted({m for ids in settled.missing.values() for m in ids})
            emit("items_stuck", waiting=settled.waiting, missing=missing[:20],
                 warning=f"{settled.waiting} items wait for items that cannot end now"
                         + (f" (not in the table: {', '.join(missing[:5])})" if missing else ""))
        return True

    # -- one item -------------------------------------------------------------------------

    def _work(self, item: Item, lease: Lease) -> None:
        held = self.keeper.hold(lease)
        emit("item_claimed", item=item.item_id, pending=len(item.pending), subtasks=len(item.subtasks))
        try:
            self._run_item(item, held)
        except LeaseLost:
            held.abandon("write_refused")
        except ItemRejected as exc:  # DynamoDB refuses the write as invalid: retrying cannot help
            self._reject(item, held, str(exc))
        except QueueError as exc:  # an outage outlasting the retries: abandon, the lease expires
            held.abandon(f"error: {exc}")
        finally:
            self.keeper.release(held)
            shutil.rmtree(self._item_scratch(item), ignore_errors=True)
        if held.lost.is_set():  # alive after losing the lease: a pause or an outage, not a crash
            self._came_back(held)

    def _came_back(self, held: HeldItem) -> None:
        try:
            self.queue.came_back(held.lease)
        except QueueError as exc:  # best effort: the reclaim, if any, then counts as a crash
            emit("came_back_unrecorded", item=held.item_id, error=str(exc))

    def _reject(self, item: Item, held: HeldItem, error: str) -> None:
        held.interrupt_all("stop", grace=0)
        line = f"item write rejected by DynamoDB: {error}"[:300]
        try:
            waiting = self._write(held, self.queue.fail_rejected, line)
        except (LeaseLost, QueueError) as exc:
            held.abandon(f"error: {exc}")
            return
        self._finished(item, False, waiting)

    def _run_item(self, item: Item, held: HeldItem) -> None:
        pending = item.pending
        if pending:
            self._fetch_committed(item)
            self._fetch_inputs(item)
        runnable = [s for s in pending if self.retry.allows(s.attempts)]
        exhausted = [s for s in pending if not self.retry.allows(s.attempts)]
        stop = item.on_failure == ON_FAILURE_STOP
        if not runnable or (stop and exhausted):
            error = None
            if exhausted:
                s = exhausted[0]
                error = f"{s.key}: no attempts left ({s.attempts} of {self.retry.max_attempts})"
            waiting = self._write(held, self.queue.finish, ItemState.FAILED if exhausted else ItemState.DONE, error,
                                  failed=[s.key for s in exhausted], skipped=[s.key for s in runnable])
            self._finished(item, not exhausted, waiting)
            return
        if self.config.nests > 1 and len(runnable) > 1 and not stop:  # stop: each needs the one before
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
            stop_here = not ok and item.on_failure == ON_FAILURE_STOP
            if n == len(runnable) - 1 or stop_here:
                rest = [s.key for s in runnable[n + 1:]]  # with stop, never run: skipped
                waiting = self._record(held, item, result, final=ItemState.DONE if ok else ItemState.FAILED,
                                       skipped=rest)
                self._finished(item, ok, waiting)
                return
            elif self.policy.stopping:
                self._record(held, item, result)
                self._give_back(held, [])
                return
            else:
                self._record(held, item, result, next_running=runnable[n + 1].key)

    def _run_parallel(self, item: Item, held: HeldItem, runnable: list[Subtask], ok: bool) -> None:
        def run_one(subtask: Subtask) -> SubtaskResult | None:
            if self.policy.stopping or held.lost.is_set():
                return None
            try:
                if subtask.status is not SubtaskStatus.RUNNING:
                    self._write(held, self.queue.mark_running, [subtask.key])
                result = self._attempts(item, held, subtask)
                if result is not None:
                    self._record(held, item, result)
                return result
            except LeaseLost:
                held.abandon("write_refused")
                return None

        with ThreadPoolExecutor(max_workers=self.config.nests, thread_name_prefix="nest") as pool:
            results = list(pool.map(run_one, runnable))
        if held.lost.is_set():
            return
        interrupted = [s.key for s, r in zip(runnable, results, strict=False) if r is None]
        if interrupted:
            self._give_back(held, interrupted)
            return
        ok = ok and all(r is not None and r.status is SubtaskStatus.DONE for r in results)
        waiting = self._write(held, self.queue.finish, ItemState.DONE if ok else ItemState.FAILED)
        self._finished(item, ok, waiting)

    def _finished(self, item: Item, ok: bool, waiting: frozenset[str]) -> None:
        """The item ended (done, or failed); ``waiting``: the items that wait for it, as the
        final write found them. They are released, or blocked, now; if this worker dies first,
        ``dependencies.reconcile`` does it."""
        with self._count_lock:
            if ok:
                self.items_done += 1
            else:
                self.items_failed += 1
        if waiting:
            try:
                if ok:
                    if release_dependents(self.queue, item.item_id, waiting):
                        self.queue.expect_work()
                else:
                    block_dependents(self.queue, item.item_id, waiting)
            except QueueError as exc:  # the reconcile pass of an idle worker or the scaler does it
                emit("release_deferred", item=item.item_id, error=str(exc))
        emit("item_done" if ok else "item_failed", item=item.item_id)

    def _give_back(self, held: HeldItem, interrupted: list[str]) -> None:
        if held.lost.is_set():
            return
        self._write(held, self.queue.release, interrupted)
        emit("item_released", item=held.item_id, interrupted=interrupted, reason=self.policy.reason)

    def _record(self, held: HeldItem, item: Item, result: SubtaskResult, **kwargs: Any) -> frozenset[str]:
        """Write a sub-task's result, and with it the manifest of its staged outputs: one
        fenced write. Only after it succeeded are the outputs committed; if it was refused,
        this attempt's staged outputs are discarded (the lease's holder commits its own)."""
        staged = self._staged.pop((item.item_id, result.key), None)
        try:
            waiting: frozenset[str] = self._write(held, self.queue.record, result, **kwargs)
        except BaseException:
            if staged is not None:
                self.outputs.discard(staged[0])
                shutil.rmtree(staged[1], ignore_errors=True)
                emit("outputs_discarded", item=item.item_id, subtask=result.key, attempt=staged[0].attempt)
            raise
        if staged is None:
            return waiting
        manifest, folder = staged
        try:
            self.outputs.commit(manifest)
        except Exception as exc:  # noqa: BLE001 - committed by the manifest; readers finish it
            emit("outputs_commit_deferred", item=item.item_id, subtask=result.key, error=str(exc))
        kept = self._item_outputs(item) / result.key  # $PYANAMO_ITEM_OUTPUTS for later sub-tasks
        shutil.rmtree(kept, ignore_errors=True)
        kept.parent.mkdir(parents=True, exist_ok=True)
        os.replace(folder, kept)
        return waiting

    def _item_scratch(self, item: Item) -> Path:
        return self.scratch / safe_name(item.item_id)

    def _item_outputs(self, item: Item) -> Path:
        return self._item_scratch(item) / "outputs"

    def _fetch_committed(self, item: Item) -> None:
        """Earlier sub-tasks' committed outputs, where this worker did not run them (a reclaim):
        downloaded into ``$PYANAMO_ITEM_OUTPUTS/<key>`` before the next sub-task starts."""
        for subtask in item.subtasks:
            try:
                files = _download_committed(subtask, self._item_outputs(item) / subtask.key)
            except (OutputError, OSError, *BOTO_ERRORS, KeyError, ValueError) as exc:
                emit("outputs_fetch_failed", item=item.item_id, subtask=subtask.key, error=str(exc))
            else:
                if files is not None:
                    emit("outputs_fetched", item=item.item_id, subtask=subtask.key, files=files)

    def _item_inputs(self, item: Item) -> Path:
        return self._item_scratch(item) / "inputs"

    def _fetch_inputs(self, item: Item) -> None:
        """The committed outputs of the items this one waited for (``After``): downloaded into
        ``$PYANAMO_INPUTS/<item>/<sub-task key>`` before its first sub-task starts (a joint step
        reads every sample's calls there)."""
        for upstream_id in item.after:
            upstream = self.queue.get(upstream_id)
            if upstream is None:
                emit("inputs_missing", item=item.item_id, upstream=upstream_id)
                continue
            for subtask in upstream.subtasks:
                try:
                    _download_committed(subtask, self._item_inputs(item) / safe_name(upstream_id) / subtask.key)
                except (OutputError, OSError, *BOTO_ERRORS, KeyError, ValueError) as exc:
                    emit("inputs_fetch_failed", item=item.item_id, upstream=upstream_id, subtask=subtask.key,
                         error=str(exc))
        if item.after and self.task_user is not None and self._item_inputs(item).exists():
            for path in [self._item_inputs(item), *self._item_inputs(item).rglob("*")]:
                os.chown(path, self.task_user.uid, self.task_user.gid)

    def _write(self, held: HeldItem, write: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """A fenced write with the current lease; retried through outages until the lease is
        about to expire or a stop is overdue, then the item is abandoned (LeaseLost).
        ItemRejected is not retried: the same write would be refused again."""
        closing = (write in (self.queue.finish, self.queue.release, self.queue.fail_rejected)
                   or kwargs.get("final") is not None)
        delay = 0.2
        while True:
            if held.lost.is_set():
                raise LeaseLost(held.item_id)
            try:
                with held.write_lock:
                    answer = write(held.lease, *args, **kwargs)
                    held.closed = closing
                return answer
            except (LeaseLost, ItemRejected):
                raise
            except QueueError as exc:
                emit("write_failed", item=held.item_id, error=str(exc))
                if self.keeper.expiring(held) or self.policy.past_deadline():
                    held.abandon("write_failed")
                    raise LeaseLost(held.item_id) from exc
                held.lost.wait(delay)
                delay = min(delay * 2, 5.0)

    # -- one sub-task ---------------------------------------------------------------------

    def _attempts(self, item: Item, held: HeldItem, subtask: Subtask) -> SubtaskResult | None:
        """Run a sub-task until it succeeds or its attempts are used; None if interrupted."""
        attempts = subtask.attempts
        earlier = earlier_of(item.log_summary.get(subtask.key), attempts, subtask.key)
        while True:
            try:
                outcome, location, outdir = self._run_once(item, held, subtask, attempts + 1)
            except LocalFailure as exc:  # this machine, not the item: give it back, no attempt used
                in_row = self.policy.local_failure(str(exc))
                emit("local_failure", item=item.item_id, subtask=subtask.key, error=str(exc), in_row=in_row)
                return None
            if outcome.interrupted:  # it and everything it started are stopped and reaped by now
                shutil.rmtree(outdir, ignore_errors=True)
                emit("subtask_interrupted", item=item.item_id, subtask=subtask.key,
                     reason="lease_lost" if held.lost.is_set() else self.policy.reason or "stop")
                return None
            attempts += 1
            result = self._result(item, subtask.key, outcome, attempts, location, earlier)
            result = self._stage(item, result, outdir)
            if result.status is SubtaskStatus.DONE or not self.retry.allows(attempts):
                return result
            earlier = Earlier.after(result.record)
            emit("subtask_retry", item=item.item_id, subtask=subtask.key, attempts=attempts,
                 exit_code=outcome.exit_code)
            self._write(held, self.queue.record, replace(result, status=SubtaskStatus.RUNNING))
            if self.policy.event.wait(self.retry.delay(attempts)) or held.lost.is_set():
                return None

    def _stage(self, item: Item, result: SubtaskResult, outdir: Path) -> SubtaskResult:
        """A done attempt's outputs go to the store, uncommitted, and its manifest into the
        result (written by ``_record``); a failed attempt's folder is dropped. Outputs that cannot
        be stored fail the attempt with the reason."""
        if result.status is not SubtaskStatus.DONE or not any(outdir.iterdir()):  # failed, or wrote nothing
            shutil.rmtree(outdir, ignore_errors=True)
            return result
        path = attempt_path(self.config.table, item.item_id, result.key, outdir.name)
        emit("outputs_staging", item=item.item_id, subtask=result.key, attempt=outdir.name)
        try:
            manifest, stored = self.outputs.stage(outdir, path, outdir.name, self.config.max_output_size)
        except (OutputError, OSError) as exc:
            shutil.rmtree(outdir, ignore_errors=True)
            emit("outputs_failed", item=item.item_id, subtask=result.key, error=str(exc))
            return replace(result, status=SubtaskStatus.FAILED, error_line=f"{result.key}: {exc}"[:300])
        self._staged[(item.item_id, result.key)] = (manifest, outdir)
        record = replace(result.record, output_files=len(manifest.files), output_bytes=manifest.size)
        return replace(result, outputs=stored, record=record)

    def _outdir(self, item: Item, subtask: Subtask, attempt: str) -> Path:
        """A fresh, empty folder for one attempt's outputs (``$PYANAMO_OUTDIR``)."""
        folder = self._item_scratch(item) / "attempts" / subtask.key / attempt
        shutil.rmtree(folder, ignore_errors=True)
        try:
            folder.mkdir(parents=True)
            if self.task_user is not None:  # the sub-task's user writes it
                os.chown(folder, self.task_user.uid, self.task_user.gid)
        except OSError as exc:
            raise LocalFailure(f"cannot create an output folder in {self.scratch}: {exc.strerror}") from None
        return folder

    def _run_once(self, item: Item, held: HeldItem, subtask: Subtask, attempt: int) -> tuple[Outcome, str, Path]:
        execution = attempt_id(attempt, held.lease.token)
        folder = self.logs.folder(item.item_id, subtask.key, execution)
        outdir = self._outdir(item, subtask, execution)
        env = {
            **subtask_environment(dict(os.environ), self.task_user, self.job),
            "PYANAMO_TABLE": self.config.table,
            "PYANAMO_ITEM_ID": item.item_id,
            "PYANAMO_TASK_ID": item.task_id,
            "PYANAMO_SUBTASK": subtask.key,
            "PYANAMO_ATTEMPT": str(attempt),
            "PYANAMO_OUTDIR": str(outdir),
            "PYANAMO_ITEM_OUTPUTS": str(self._item_outputs(item)),
            **({"PYANAMO_INPUTS": str(self._item_inputs(item))} if item.after else {}),
        }
        user = (self.task_user.uid, self.task_user.gid) if self.task_user else None
        process = self.launcher.launch(Launch(subtask.script, env=env, cwd=self.config.workdir, log_folder=folder,
                                              timeout=self.config.timeout, user=user,
                                              deadline=self.keeper.deadline(held)))
        held.track(process)
        if self.policy.stopping:
            process.interrupt("stop")
        emit("subtask_started", item=item.item_id, subtask=subtask.key, attempt=attempt)
        try:
            outcome = process.run()
        finally:
            held.untrack(process)
        self.policy.local_success()
        location = "" if outcome.interrupted else self.logs.publish(folder)
        return outcome, location, outdir

    def _result(self, item: Item, key: str, outcome: Outcome, attempts: int, location: str,
                earlier: Earlier) -> SubtaskResult:
        scripts = sum(len(s.script.encode("utf-8")) for s in item.subtasks)
        tail = max(MIN_TAIL_BYTES, tail_budget(scripts, len(item.subtasks)))
        out = summarize_stream(outcome.stdout, tail)
        err = summarize_stream(outcome.stderr, tail)
        status = SubtaskStatus.DONE if outcome.succeeded else SubtaskStatus.FAILED
        error_line = None
        if not outcome.succeeded:
            if outcome.timed_out:
                reason = f"timed out after {self.config.timeout:g}s"
            elif (killed := outcome.signal_reason()) is not None:
                reason = killed
            else:
                reason = last_line(err.tail) or last_line(out.tail) or f"exit code {outcome.exit_code}"
            error_line = f"{key}: {reason}"
        record = run_record(outcome, self.placement, self.queue.worker_id, self.config.slots, earlier,
                            attempt=attempts, log_location=location, log_lines=out.lines + err.lines,
                            log_bytes=out.size + err.size)
        with self._count_lock:
            self.busy_seconds += outcome.wall_time
        emit("subtask_finished", item=item.item_id, subtask=key, exit_code=outcome.exit_code,
             cpu=record.cpu_time, wall=record.wall_time)
        return SubtaskResult(
            key=key,
            status=status,
            attempts=attempts,
            exit_code=outcome.exit_code,
            log={"stdout": out.tail, "stderr": err.tail},
            record=record,
            error_line=error_line,
        )


def _download_committed(subtask: Subtask, folder: Path) -> int | None:
    """A done sub-task's committed outputs, downloaded into ``folder`` unless it is there
    already: the number of files, or None when there was nothing to download."""
    if subtask.status is not SubtaskStatus.DONE or not subtask.outputs or folder.exists():
        return None
    manifest = Manifest.from_map(subtask.outputs)
    store_of_location(manifest.location).fetch(manifest, folder)
    return len(manifest.files)
