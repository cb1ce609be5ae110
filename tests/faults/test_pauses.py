"""Scenario 23: a machine that sleeps (or a VM paused, or a worker stopped with Ctrl-Z) for
longer than the lease, three times: the crash limit counts crashes, not pauses.

Each time the machine wakes, its worker finds its lease expired, stops the sub-task and says it
came back; the claim that follows is then not counted against --max-claims (3). Before, the
third pause failed the healthy item "abandoned by 3 workers (out of memory?)"."""

from __future__ import annotations

import os
import signal
import time

from pyanamo.gateway import crashes
from pyanamo.queue import TaskQueue
from pyanamo.schema import Attr, ItemState

from faultkit import NOT_RECORDED, STOPPED, Analysis, Figures, interruptions, measured
from helpers import cli, descendants, wait_for, write_task_file


def pause_tree(pid: int, seconds: float) -> None:
    """Freeze a worker and everything under it for ``seconds``, as a sleeping machine does."""
    tree = [pid, *descendants(pid)]
    for p in tree:
        signal_quietly(p, signal.SIGSTOP)
    time.sleep(seconds)
    for p in tree:
        signal_quietly(p, signal.SIGCONT)


def signal_quietly(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def test_pauses_longer_than_the_lease_are_not_crashes(aws_env, client, table, tmp_path, workers, recorder):
    lease, pauses = 3, 3
    rows = [f"sleepy|S|{recorder.command(4)} a", f"sleepy|S|{recorder.command(0)} b"]
    assert cli("import", table, str(write_task_file(tmp_path / "t.txt", rows)), env=aws_env).returncode == 0
    worker = workers.start(table, "--lease", str(lease), "--max-claims", "3")
    for n in range(1, pauses + 1):
        wait_for(lambda n=n: recorder.starts().get(("sleepy", "Task_0"), 0) >= n, timeout=60,
                 message=f"run {n} of Task_0")
        pause_tree(worker.pid, 2 * lease)
    assert worker.wait(timeout=120) == 0
    queue = TaskQueue(client, table)
    item = queue.get("sleepy")
    assert item.state is ItemState.DONE, item.last_error
    row = client.get_item(TableName=table, Key={Attr.ITEM_ID: {"S": "sleepy"}})["Item"]
    assert int(row[Attr.ABANDONED]["N"]) == pauses and crashes(row) == 0
    analysis = Analysis(recorder.runs(), stopped=interruptions(workers.processes))
    figures = measured(queue, {"sleepy": ItemState.DONE}, analysis)
    # A frozen `sleep` wakes with its time up (the clock ran on): it may end before the worker
    # stops it, and that run's result is then refused (the lease is gone), as it must be.
    assert figures["overlaps"] == 0 and set(figures["why"]) <= {STOPPED, NOT_RECORDED}
    Figures("23. a machine asleep longer than the lease, 3 times", runs=1, items=1, subtasks=2,
            faults=f"worker and sub-task frozen {pauses} × {2 * lease} s on a {lease} s lease (--max-claims 3)",
            recovery=f"0 false crash-limit failures: {pauses} abandoned claims, 0 counted as crashes",
            **figures).save()
