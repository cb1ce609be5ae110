"""Scenario 12: a worker that cannot run sub-tasks on its machine (its log folder cannot be
created, as on a full disk) gives each item back at once, backs off, and exits 1 after a few
failures in a row; it never swallows the queue, and a healthy worker beside it drains it."""

from __future__ import annotations

import time

from pyanamo.queue import TaskQueue
from pyanamo.runner import safe_name
from pyanamo.schema import ItemState
from pyanamo.worker_policy import MAX_LOCAL_FAILURES

from faultkit import Analysis, Figures, measured
from helpers import cli, wait_for, write_task_file


def test_a_sick_worker_gives_items_back_and_exits(aws_env, client, table, tmp_path, workers, recorder):
    items = 30
    rows = [f"i{n:02d}|S|{recorder.command(0.5)}" for n in range(items)]  # 15 s for one worker
    assert cli("import", table, str(write_task_file(tmp_path / "t.txt", rows)), env=aws_env).returncode == 0
    sick_logs = tmp_path / "sick-logs"
    sick_logs.mkdir()
    (sick_logs / safe_name(table)).write_text("a file where the table's log folder should be\n")
    started = time.monotonic()
    sick = workers.start(table, "--lease", "10", "--log-dir", str(sick_logs), name="sick")
    wait_for(lambda: b"local_failure" in sick.log_path.read_bytes(), message="the first local failure")
    healthy = workers.start(table, "--lease", "10", name="healthy")
    assert sick.wait(timeout=60) == 1
    sick_seconds = time.monotonic() - started
    assert healthy.wait(timeout=120) == 0
    log = sick.log_path.read_text()
    assert log.count('"item_claimed"') == MAX_LOCAL_FAILURES
    assert log.count('"item_released"') == MAX_LOCAL_FAILURES
    errors = [line for line in log.splitlines() if line.startswith("pyanamo: error:")]
    assert len(errors) == 1 and "cannot write logs in" in errors[0], errors
    queue = TaskQueue(client, table)
    for n in range(items):
        item = queue.get(f"i{n:02d}")
        assert item.state is ItemState.DONE and item.subtasks[0].attempts == 1, item
    analysis = Analysis(recorder.runs())
    assert set(analysis.completed().values()) == {1} and analysis.duplicates() == {}
    assert {run.worker for run in recorder.runs()} == {"healthy"}
    Figures("12. sick worker", runs=1, items=items, subtasks=items,
            faults="one worker whose log folder cannot be created, next to a healthy one",
            **measured(queue, {f"i{n:02d}": ItemState.DONE for n in range(items)}, analysis),
            recovery=f"the sick worker made {MAX_LOCAL_FAILURES} claims, gave each item back (no attempt used) "
                     f"and exited 1 after {sick_seconds:.1f} s; the healthy one drained all {items}").save()
