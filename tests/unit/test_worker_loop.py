"""The worker's loop against the in-memory queue (tests/fakes.py): real sub-task processes,
no table, no network."""

from __future__ import annotations

import dataclasses
import signal
import threading
import time
from pathlib import Path

import pytest

from pyanamo.errors import ItemRejected, Unreachable
from pyanamo.schema import ItemState, SubtaskStatus
from pyanamo.worker import EXIT_DRAINED, EXIT_ERROR, EXIT_FAILED_ITEMS, Worker, WorkerConfig

from fakes import InMemoryQueue, item, put


def worker(queue: InMemoryQueue, tmp_path: Path, **config) -> Worker:
    settings = {"lease": 10.0, "max_attempts": 1, "retry_delay": 0.05, **config}
    return Worker(queue, WorkerConfig(table="memory", workdir=tmp_path, log_dir=tmp_path / "logs", **settings))


def test_a_drained_queue_exits_0_and_failed_items_exit_3(tmp_path: Path):
    queue = InMemoryQueue(owner="w")
    put(queue, item("ok", "echo 1", "echo 2"))
    assert worker(queue, tmp_path).run() == EXIT_DRAINED
    assert queue.get("ok").state is ItemState.DONE
    put(queue, item("bad", "echo 'it broke' >&2; exit 3"))
    run = worker(queue, tmp_path)
    assert run.run() == EXIT_FAILED_ITEMS and (run.items_done, run.items_failed) == (0, 1)
    bad = queue.get("bad")
    assert bad.state is ItemState.FAILED and bad.last_error == "Task_0: it broke"


def test_a_failing_subtask_is_retried_then_recorded(tmp_path: Path):
    queue = InMemoryQueue(owner="w")
    flag = tmp_path / "flag"
    put(queue, item("flaky", f"test -e {flag} || {{ touch {flag}; exit 9; }}"))
    assert worker(queue, tmp_path, max_attempts=2).run() == EXIT_DRAINED
    flaky = queue.get("flaky")
    assert flaky.state is ItemState.DONE and flaky.subtasks[0].attempts == 2


def test_an_unreachable_table_past_the_outage_limit_exits_1(tmp_path: Path):
    queue = InMemoryQueue(owner="w")
    queue.outage = Unreachable("connection refused")
    run = worker(queue, tmp_path, outage_limit=0.3)
    started = time.monotonic()
    assert run.run() == EXIT_ERROR
    assert run.policy.reason == "queue_unreachable" and time.monotonic() - started < 5


def test_a_stop_releases_the_running_item_without_using_an_attempt(tmp_path: Path):
    queue = InMemoryQueue(owner="w")
    started_second = tmp_path / "second-started"
    put(queue, item("long", "echo first", f"touch {started_second}; sleep 30"))
    run = worker(queue, tmp_path)

    def stop_once_the_second_runs() -> None:  # on what the sub-task wrote, not a timer
        while not started_second.exists():
            time.sleep(0.05)
        run.stop("SIGTERM", signal.SIGTERM)

    threading.Thread(target=stop_once_the_second_runs, daemon=True).start()
    started = time.monotonic()
    assert run.run() == 128 + signal.SIGTERM
    assert time.monotonic() - started < 10
    long = queue.get("long")
    assert long.state is ItemState.TODO and long.lease_token is None
    assert [(s.status, s.attempts) for s in long.subtasks] == [(SubtaskStatus.DONE, 1), (SubtaskStatus.TODO, 0)]


def test_a_refused_write_fails_the_item_with_the_reason(tmp_path: Path):
    class Refusing(InMemoryQueue):
        def record(self, lease, result, **kwargs):
            raise ItemRejected("Item size to update has exceeded the maximum allowed size")

    queue = Refusing(owner="w")
    put(queue, item("big", "echo 1"))
    assert worker(queue, tmp_path).run() == EXIT_FAILED_ITEMS
    big = queue.get("big")
    assert big.state is ItemState.FAILED
    assert big.last_error == ("item write rejected by DynamoDB: "
                              "Item size to update has exceeded the maximum allowed size")


def test_an_idle_worker_lingers_behind_another_workers_live_item_then_exits(tmp_path: Path):
    queue = InMemoryQueue(owner="other", lease_seconds=60)
    put(queue, item("held"))
    assert queue.claim() is not None
    run = worker(queue.sharing(owner="w"), tmp_path, linger=0.5)
    assert run.run() == EXIT_DRAINED and run.policy.reason == "linger_expired"


@pytest.mark.parametrize("nests", [1, 3])
def test_items_of_several_subtasks_run_all_of_them_once(tmp_path: Path, nests: int):
    queue = InMemoryQueue(owner="w")
    put(queue, *[item(f"i{n}", *[f"echo {n}-{k} >> {tmp_path}/ran" for k in range(3)]) for n in range(4)])
    assert worker(queue, tmp_path, items=2, nests=nests).run() == EXIT_DRAINED
    assert sorted((tmp_path / "ran").read_text().split()) == sorted(f"{n}-{k}" for n in range(4) for k in range(3))


class _RecordingLauncher:
    """A launcher that runs nothing: it answers each launch with exit 0 and keeps what it was asked."""

    def __init__(self) -> None:
        self.launches: list = []
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def launch(self, launch):
        self.launches.append(launch)
        launch.log_folder.mkdir(parents=True, exist_ok=True)
        for stream in ("stdout", "stderr"):
            (launch.log_folder / stream).write_text(f"{stream} of {launch.env['PYANAMO_SUBTASK']}\n")
        return _Finished(launch)


class _Finished:
    def __init__(self, launch) -> None:
        self.launch = launch

    def run(self):
        from pyanamo.runner import Outcome

        folder = self.launch.log_folder
        return Outcome(0, False, 0.5, 1.0, folder / "stdout", folder / "stderr", started_at=time.time())

    def interrupt(self, reason: str = "stop", grace: float | None = None) -> None:
        pass

    def extend(self, seconds: float) -> None:
        pass


def test_sub_tasks_start_through_the_launcher_the_worker_is_given(tmp_path: Path):
    """The Launcher seam: the worker says what runs (script, environment, limits); the launcher
    how. A launcher that runs nothing still ends the item done, with its outcomes recorded."""
    queue = InMemoryQueue(owner="w")
    put(queue, item("s1", "never run 1", "never run 2"))
    launcher = _RecordingLauncher()
    run = Worker(queue, WorkerConfig(table="memory", workdir=tmp_path, log_dir=tmp_path / "logs", lease=10.0,
                                     timeout=30.0), launcher=launcher)
    assert run.run() == EXIT_DRAINED
    assert [launch.script for launch in launcher.launches] == ["never run 1", "never run 2"]
    assert launcher.closed, "the worker did not close its launcher when it was done"
    first = launcher.launches[0]
    assert first.env["PYANAMO_ITEM_ID"] == "s1" and first.timeout == 30.0 and first.deadline is not None
    done = queue.get("s1")
    assert done.state is ItemState.DONE and done.logs["Task_1"]["stdout"] == "stdout of Task_1\n"
    assert done.log_summary["Task_0"]["CPU_Time"] == 0.5


def test_an_item_released_between_the_drain_checks_reads_is_run_not_left_behind(tmp_path: Path):
    """Another slot releases an item (waiting -> todo) after this slot read no todo item and
    before it read no waiting one: in neither read. The drain check reads the claimable states
    again, so the worker runs it instead of exiting (seen in a full run under load)."""

    class ReleasedMeanwhile(InMemoryQueue):
        released = False

        def any_in_state(self, state: ItemState) -> bool:
            if state is ItemState.WAITING and not self.released:
                self.released = True
                assert self.wake("b")  # its upstream ended on another slot a moment ago
            return super().any_in_state(state)

    queue = ReleasedMeanwhile(owner="w")
    put(queue, item("b"))
    queue._rows["b"].item = dataclasses.replace(queue.get("b"), state=ItemState.WAITING)
    assert worker(queue, tmp_path, items=1).run() == EXIT_DRAINED
    assert queue.released and queue.get("b").state is ItemState.DONE
