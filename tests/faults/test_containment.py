"""Scenario 10: no process a sub-task starts outlives it — not one that left its process group or
session (setsid, nohup, timeout, a double fork), not when its worker is SIGKILLed, and (where the
worker may create cgroups) not when its worker and its supervisor are SIGKILLed together."""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import pytest

from pyanamo.cgroups import CgroupParent
from pyanamo.queue import TaskQueue
from pyanamo.schema import Attr, ItemState

from faultkit import Analysis, Figures, executions, interruptions, measured
from helpers import cli, supervisor_of, wait_for, write_task_file


def escapees(tag: str, pids: Path) -> str:
    """A shell fragment that leaves four processes behind, each in its own way, all running
    `sleep <tag>` (a duration unique to the test, so they can be found in /proc)."""
    return (f"setsid sleep {tag} & echo $! >> {pids}; "
            f"nohup sleep {tag} > /dev/null 2>&1 & echo $! >> {pids}; "
            f"timeout 300 sleep {tag} & echo $! >> {pids}; "
            f"(setsid sleep {tag} & echo $! >> {pids}) & wait $!")


def living(tag: str) -> list[int]:
    """PIDs of live processes running `sleep <tag>` (zombies are not alive)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if cmdline == f"sleep\0{tag}\0".encode() and state != "Z":
            found.append(int(entry.name))
    return found


def unique_duration() -> str:
    return f"300.{uuid.uuid4().int % 10**6:06d}"


def test_nothing_outlives_its_subtask_end_or_timeout(aws_env, client, table, tmp_path, workers):
    tag = unique_duration()
    pids = tmp_path / "pids"
    rows = [f"leaves|S|{escapees(tag, pids)}; echo done",
            f"hangs|S|{escapees(tag, pids)}; sleep {tag}"]
    assert cli("import", table, str(write_task_file(tmp_path / "t.txt", rows)), env=aws_env).returncode == 0
    worker = workers.start(table, "--lease", "10", "--timeout", "3", "--max-attempts", "1")
    assert worker.wait(timeout=120) == 3  # "hangs" timed out: a failed item
    queue = TaskQueue(client, table)
    assert queue.get("leaves").state is ItemState.DONE
    hangs = queue.get("hangs")
    assert hangs.state is ItemState.FAILED and hangs.subtasks[0].exit_code == 124
    started = [int(p) for p in pids.read_text().split()]
    assert len(started) == 8
    assert living(tag) == [], "a process escaped its sub-task"
    Figures("10a. escaping processes", runs=1, items=2, subtasks=2,
            faults="8 processes left behind through setsid, nohup, timeout and a double fork; "
                   "one sub-task past --timeout",
            **measured(queue, {"leaves": ItemState.DONE, "hangs": ItemState.FAILED},
                       Analysis(executions(workers.processes), stopped=interruptions(workers.processes))),
            recovery="none left when each sub-task ended (checked in /proc)").save()


def test_a_sigkilled_worker_takes_its_subtask_tree_down(aws_env, client, table, tmp_path, workers):
    tag = unique_duration()
    pids = tmp_path / "pids"
    second_run = tmp_path / "second-run"
    script = (f"if [ -e {second_run} ]; then echo finished; "
              f"else touch {second_run}; {escapees(tag, pids)}; sleep {tag}; fi")
    assert cli("import", table, str(write_task_file(tmp_path / "t.txt", [f"oom|S|{script}"])),
               env=aws_env).returncode == 0
    first = workers.start(table, "--lease", "4", name="w-first", env={"AWS_BATCH_JOB_ID": "w-first"})
    wait_for(lambda: len(living(tag)) == 5, timeout=60, message="the sub-task and its escapees running")
    os.kill(first.pid, signal.SIGKILL)  # the worker alone, as the OOM killer would
    killed, killed_at = time.monotonic(), time.time()
    wait_for(lambda: living(tag) == [], timeout=10, interval=0.05, message="the sub-task's tree gone")
    gone_after = time.monotonic() - killed
    assert gone_after < 5
    second = workers.start(table, "--lease", "4", name="w-second", env={"AWS_BATCH_JOB_ID": "w-second"})
    assert second.wait(timeout=60) == 0
    row = client.get_item(TableName=table, Key={Attr.ITEM_ID: {"S": "oom"}})["Item"]
    item = TaskQueue(client, table).get("oom")
    assert item.state is ItemState.DONE and item.logs["Task_0"]["stdout"] == "finished\n"
    assert row[Attr.ABANDONED]["N"] == "1" and row[Attr.LAST_HOLDER]["S"] == "w-first"
    Figures("10b. worker SIGKILLed mid-sub-task", runs=1, items=1, subtasks=1,
            faults="SIGKILL to the worker process alone, its sub-task holding 4 escaped processes",
            **measured(TaskQueue(client, table), {"oom": ItemState.DONE},
                       Analysis(executions(workers.processes), {"w-first": killed_at + gone_after})),
            recovery=f"the sub-task and its 4 escapees gone {gone_after:.2f} s after the kill; "
                     "reclaimed after the lease ran out").save()


@pytest.mark.skipif(CgroupParent.find() is None,
                    reason="this process may not create cgroups (no writable cgroup v2): a cgroup is what "
                           "holds a sub-task whose worker and supervisor are both gone")
def test_a_subtask_whose_worker_and_supervisor_die_together_is_killed_by_the_next_worker(
        aws_env, client, table, tmp_path, workers):
    tag = unique_duration()
    second_run = tmp_path / "second-run"
    ticks = tmp_path / "ticks"
    # an escapee that leaves the tree and clears its environment (the worker's marker goes with it)
    script = (f"if [ -e {second_run} ]; then date +%s.%N > {second_run}; echo finished; "
              f"else touch {second_run}; env -i setsid sleep {tag} & "
              f"while :; do date +%s.%N >> {ticks}; sleep 0.1; done; fi")
    assert cli("import", table, str(write_task_file(tmp_path / "t.txt", [f"both|S|{script}"])),
               env=aws_env).returncode == 0
    # This test's workers in a cgroup of their own: a worker that another test starts meanwhile
    # (pytest -n) would sweep the orphans of the first worker before this test's second worker does.
    own = CgroupParent(CgroupParent.find().path / f"test-10c-{uuid.uuid4().hex[:8]}")
    own.path.mkdir()
    inside = ("sh", "-c", f'echo $$ > {own.path}/cgroup.procs && exec "$@"', "sh")
    first = workers.start(table, "--lease", "4", name="w-first", env={"AWS_BATCH_JOB_ID": "w-first"},
                          wrapper=inside)
    wait_for(lambda: ticks.exists() and len(living(tag)) == 1, timeout=60, message="the sub-task running")
    try:
        supervisor = supervisor_of(first.pid)
        os.kill(first.pid, signal.SIGSTOP)  # so the worker cannot act on its supervisor's death
        os.kill(supervisor, signal.SIGKILL)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
        killed = time.time()
        wait_for(lambda: float(ticks.read_text().split()[-1]) > killed + 0.3, timeout=30,
                 message="the orphaned sub-task ticking on after both were killed")
        second = workers.start(table, "--lease", "4", name="w-second", env={"AWS_BATCH_JOB_ID": "w-second"},
                               wrapper=inside)
        second_started = time.time()
        wait_for(lambda: living(tag) == [], timeout=60, interval=0.05, message="the orphans killed")
        assert second.wait(timeout=90) == 0
        last_tick = float(ticks.read_text().split()[-1])
        rerun_at = float(second_run.read_text())
    finally:
        own.sweep()  # whatever a failure left: the cgroups of dead workers
        for pid in living(tag):
            os.kill(pid, signal.SIGKILL)
        left = [p for p in own.path.iterdir() if p.is_dir()]
    assert last_tick < rerun_at, "the orphaned first run overlapped the second"
    item = TaskQueue(client, table).get("both")
    assert item.state is ItemState.DONE and item.logs["Task_0"]["stdout"] == "finished\n"
    assert left == [], "a sub-task cgroup was left behind"
    own.path.rmdir()
    Figures("10c. worker and supervisor SIGKILLed together", runs=1, items=1, subtasks=1, lost=0, overlaps=0,
            duplicates=0, why={},
            faults="the worker stopped, its supervisor SIGKILLed, then the worker SIGKILLed: the sub-task "
                   "and an escapee that left the tree and cleared its environment orphaned",
            recovery=f"the orphans ran on until the next worker started on this machine; it killed them through "
                     f"their cgroup ({last_tick - second_started:+.2f} s from its start to the last tick), "
                     f"{rerun_at - last_tick:.1f} s before the rerun").save()
