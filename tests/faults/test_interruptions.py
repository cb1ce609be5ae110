"""Scenarios 5 and 6: a Spot interruption notice and SIGTERM (scale-in, systemd stop).

Either way the worker stops claiming, stops the running sub-task's process group, returns the
item to todo with finished sub-tasks kept, does not count an attempt, and exits within 10 s.
"""

from __future__ import annotations

import signal
import time

import pytest

from pyanamo.queue import TaskQueue
from pyanamo.schema import ItemState, SubtaskStatus

from faultkit import STOPPED, Analysis, Figures, interruptions, measured
from helpers import StubImds, cli, wait_for, write_task_file


def run_and_interrupt(aws_env, client, table, tmp_path, workers, recorder, how: str, monkeypatch):
    first = tmp_path / "first-run"  # Task_1 is long on its first run only
    slow_once = f"if [ -e {first} ]; then {recorder.command(0)} b; else touch {first}; {recorder.command(60)} b; fi"
    rows = [f"long|S|{recorder.command(0)} a", f"long|S|{slow_once}", f"long|S|{recorder.command(0)} c"]
    assert cli("import", table, str(write_task_file(tmp_path / "t.txt", rows)), env=aws_env).returncode == 0
    with StubImds("i-0abcdef0123456789") as imds:
        if how == "spot":
            monkeypatch.delenv("AWS_EC2_METADATA_DISABLED")
            monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.url)
            workers.env = {k: v for k, v in workers.env.items() if k != "AWS_EC2_METADATA_DISABLED"}
        worker = workers.start(table, "--lease", "30", "--max-attempts", "1")
        wait_for(lambda: ("long", "Task_1") in recorder.starts(), message="Task_1 started")
        sent = time.monotonic()
        if how == "spot":
            imds.interrupt()
        else:
            worker.send_signal(signal.SIGTERM)
        code = worker.wait(timeout=20)
        stopped = time.monotonic() - sent
    assert code == 128 + signal.SIGTERM  # "stopped": on the fleet the instance stays in its group
    assert stopped < 10
    item = TaskQueue(client, table).get("long")
    assert item.state is ItemState.TODO and item.lease_token is None
    assert [(s.status, s.attempts) for s in item.subtasks] == [
        (SubtaskStatus.DONE, 1), (SubtaskStatus.TODO, 0), (SubtaskStatus.TODO, 0)], "an attempt was used up"
    time.sleep(0.5)
    assert [r.end for r in recorder.runs() if r.subtask == "Task_1"] == [None], "the sub-task kept running"
    # Another worker finishes it, without re-running Task_0.
    assert workers.start(table, "--lease", "30").wait(timeout=60) == 0
    assert TaskQueue(client, table).get("long").state is ItemState.DONE
    analysis = Analysis(recorder.runs(), stopped=interruptions(workers.processes))
    assert analysis.overlaps() == [] and recorder.starts()[("long", "Task_0")] == 1
    return worker, stopped, analysis


@pytest.mark.parametrize("how", ["spot", "sigterm"])
def test_interruption_releases_the_item(aws_env, client, table, tmp_path, workers, recorder, monkeypatch, how):
    worker, stopped, analysis = run_and_interrupt(aws_env, client, table, tmp_path, workers, recorder, how,
                                                  monkeypatch)
    if how == "spot":
        assert b'"event": "spot_interruption"' in worker.log_path.read_bytes()
    duplicates = analysis.duplicates()
    assert duplicates == {STOPPED: 1}  # the interrupted Task_1, rerun once
    name = "5. Spot interruption notice" if how == "spot" else "6. SIGTERM"
    Figures(name, runs=1, items=1, subtasks=3,
            faults="spot/instance-action in IMDS" if how == "spot" else "SIGTERM to the worker",
            **measured(TaskQueue(client, table), {"long": ItemState.DONE}, analysis),
            recovery=f"worker exited {stopped:.1f} s after the {'notice' if how == 'spot' else 'signal'}; "
                     "item back in todo").save()
