"""Scenario 21: an attempt run twice (its first worker killed, the item reclaimed) keeps both
executions' logs. Before, both wrote `attempt-1/` and the second run's log replaced the first's."""

from __future__ import annotations

import time

from pyanamo.queue import TaskQueue
from pyanamo.runner import safe_name
from pyanamo.schema import ItemState

from faultkit import Figures
from helpers import cli, kill_tree, wait_for, write_task_file


def test_a_reclaimed_attempt_keeps_the_first_executions_log(aws_env, client, table, tmp_path, workers):
    marker, lines = tmp_path / "ran-once", 60
    script = (f"if [ -e {marker} ]; then echo second run; else touch {marker}; seq 1 {lines}; sleep 300; fi")
    tasks = write_task_file(tmp_path / "t.txt", [f"x|S|{script}"])
    assert cli("import", table, str(tasks), env=aws_env).returncode == 0
    subtask_logs = workers.root / "logs" / safe_name(table) / "x" / "Task_0"

    def first_log_written() -> bool:
        return any(f.read_text().count("\n") == lines for f in subtask_logs.glob("attempt-*/stdout"))

    first = workers.start(table, "--lease", "3", name="first")
    wait_for(first_log_written, timeout=60, message="the first execution's output")
    kill_tree(first.pid)
    killed = time.monotonic()
    second = workers.start(table, "--lease", "3", name="second")
    assert second.wait(timeout=120) == 0
    item = TaskQueue(client, table).get("x")
    assert item.state is ItemState.DONE and item.subtasks[0].attempts == 1  # a crash costs no attempt

    logs = sorted((f.read_text() for f in subtask_logs.glob("attempt-1-*/stdout")), key=len)
    assert logs == ["second run\n", "".join(f"{n}\n" for n in range(1, lines + 1))]
    Figures("21. an attempt run twice (reclaimed)", runs=1, items=1, subtasks=1,
            faults="worker SIGKILLed mid-run, item reclaimed", lost=0, overlaps=0, duplicates=1,
            why={"worker killed mid-run": 1},
            recovery=f"both executions' logs kept ({lines} of {lines} lines of the first); "
                     f"reclaimed in {time.monotonic() - killed:.1f} s").save()
