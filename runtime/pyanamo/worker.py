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
import shutil
import signal
import threading
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from .accounting import local_placement
from .aws import Endpoint, aws_client
from .cgroups import CgroupParent
from .dependencies import block_dependents, reconcile, release_dependents
from .errors import EXIT_FAILED_ITEMS, ItemRejected, QueueError
from .events import emit
from .gateway import Lease, LeaseLost, SubtaskResult
from .launcher import ForkServerLauncher, Launch, Launcher
from .lease import HeldItem, LeaseKeeper
from .logstore import LogStore
from .model import ON_FAILURE_STOP, Item, Subtask
from .outputs import attempt_id, store_for
from .ports import WorkQueue
from .runner import LocalFailure, Outcome, last_line, summarize_stream
from .sandbox import JobCredentials, TaskUser, subtask_environment
from .schema import CLAIMABLE_STATES, MIN_TAIL_BYTES, ItemState, SubtaskStatus, tail_budget
from .worker_policy import EXIT_DRAINED, EXIT_ERROR, Backoff, RetryPolicy, StopPolicy, WorkerConfig
from .worker_record import Earlier, WorkerCounters, WorkerRecord, earlier_of, run_record
from .workspace import Workspace

__all__ = ["EXIT_DRAINED", "EXIT_ERROR", "EXIT_FAILED_ITEMS", "Worker", "WorkerConfig"]  # what a caller needs


class Worker:
    def __init__(self, queue: WorkQueue, config: WorkerConfig, logs: LogStore | None = None,
                 launcher: Launcher | None = None) -> None:
        self.queue = queue
        self.launcher: Launcher = launcher or ForkServerLauncher(CgroupParent.find())
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
        self.task_user = TaskUser.named(config.run_as) if config.run_as else None
        self.workspace = Workspace(config.workdir / ".pyanamo", config.table, store_for(config.outputs),
                                   task_user=self.task_user, max_output_size=config.max_output_size)
        self.job = (JobCredentials(config.job_role, lambda: aws_client("sts", Endpoint()),
                                   f"pyanamo-{queue.worker_id}") if config.job_role else None)

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
        overdue = False
        for slot in slots:
            while slot.is_alive() and not overdue:
                slot.join(timeout=0.5)
                overdue = self.policy.past_deadline()  # a request stuck in an outage: leave anyway;
        if overdue:  # the supervisors kill the sub-tasks as we exit
            emit("worker_stop_overdue")
        else:  # every sub-task has ended
            self.launcher.close()
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
            self.workspace.clean(item)
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
            self.workspace.prepare(item, self.queue.get)
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
        try:
            waiting: frozenset[str] = self._write(held, self.queue.record, result, **kwargs)
        except BaseException:
            self.workspace.settle(item, result.key, recorded=False)
            raise
        self.workspace.settle(item, result.key, recorded=True)
        return waiting

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
            result = self.workspace.stage(item, result, outdir)
            if result.status is SubtaskStatus.DONE or not self.retry.allows(attempts):
                return result
            earlier = Earlier.after(result.record)
            emit("subtask_retry", item=item.item_id, subtask=subtask.key, attempts=attempts,
                 exit_code=outcome.exit_code)
            self._write(held, self.queue.record, replace(result, status=SubtaskStatus.RUNNING))
            if self.policy.event.wait(self.retry.delay(attempts)) or held.lost.is_set():
                return None

    def _run_once(self, item: Item, held: HeldItem, subtask: Subtask, attempt: int) -> tuple[Outcome, str, Path]:
        execution = attempt_id(attempt, held.lease.token)
        folder = self.logs.folder(item.item_id, subtask.key, execution)
        outdir = self.workspace.attempt_folder(item, subtask, execution)
        env = {
            **subtask_environment(dict(os.environ), self.task_user, self.job),
            "PYANAMO_TABLE": self.config.table,
            "PYANAMO_ITEM_ID": item.item_id,
            "PYANAMO_TASK_ID": item.task_id,
            "PYANAMO_SUBTASK": subtask.key,
            "PYANAMO_ATTEMPT": str(attempt),
            **self.workspace.environment(item, outdir),
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
