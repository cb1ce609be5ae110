"""Scenario 30: `pyanamo cancel` of a running item stops its sub-task within seconds, as `scancel`
or Batch's TerminateJob do. Before, it took effect at the worker's next lease renewal (a third of
the lease: 40 s by default, 100 s on the fleet), and the next sub-task started meanwhile."""

from __future__ import annotations

import time

from pyanamo.queue import TaskQueue
from pyanamo.schema import ItemState

from faultkit import Figures
from helpers import cli, wait_for, write_task_file

TICK = 0.1


def test_cancel_stops_a_running_subtask_within_seconds(aws_env, client, table, tmp_path, workers):
    ticks, after = tmp_path / "ticks", tmp_path / "next-subtask-ran"
    rows = [f"long|S|for i in $(seq 1 1200); do date +%s.%N >> {ticks}; sleep {TICK}; done",
            f"long|S|touch {after}"]
    assert cli("import", table, str(write_task_file(tmp_path / "t.txt", rows)), env=aws_env).returncode == 0
    worker = workers.start(table, "--lease", "120")  # renewals every 40 s: too late to be what stops it
    wait_for(lambda: ticks.exists() and ticks.read_text().count("\n") >= 3, timeout=60, message="the sub-task")
    cancel = cli("cancel", table, "long", env=aws_env)
    cancelled = time.time()
    assert cancel.returncode == 0 and "cancelled long: locked -> cancelled" in cancel.stdout, cancel.stderr
    assert worker.wait(timeout=60) == 0
    stopped_after = float(ticks.read_text().split()[-1]) - cancelled
    assert stopped_after < 20, stopped_after
    assert not after.exists(), "the next sub-task must not start"
    assert TaskQueue(client, table).get("long").state is ItemState.CANCELLED
    Figures("30. cancel of a running item", runs=1, items=1, subtasks=2, lost=0, overlaps=0, duplicates=0, why={},
            faults="`pyanamo cancel` while its first sub-task runs, on a 120 s lease",
            recovery=f"its sub-task stopped {max(stopped_after, 0):.1f} s after the cancel (a check every 2 s); "
                     f"the next sub-task never started").save()
