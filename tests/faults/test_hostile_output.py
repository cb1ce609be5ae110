"""Scenario 7: 50 MB of output, invalid UTF-8, and a silent sub-task hanging past --timeout."""

from __future__ import annotations

import time
from pathlib import Path

from pyanamo.queue import TaskQueue
from pyanamo.schema import ITEM_BUDGET_BYTES, ITEM_LIMIT_BYTES, ItemState

from faultkit import Analysis, Figures, executions, interruptions, item_size, measured
from helpers import cli, write_task_file


def test_huge_and_hostile_output(aws_env, client, table, tmp_path: Path, workers, soak):
    megabytes = 200 if soak else 50
    noisy = 260 if soak else 100
    marker = tmp_path / "outlived"
    rows = [
        f"huge|S|head -c {megabytes * 1024 * 1024} /dev/zero | tr '\\0' 'y' | fold -w 1000",
        "huge|S|yes 'stderr line' | head -c 5000000 >&2",
        "binary|S|head -c 100000 /dev/urandom; printf '\\xff\\xfe\\xfd' >&2; exit 3",
        f"silent|S|(sleep 8; touch {marker}) & sleep 600",
    ] + [f"wide|S|seq 1 20000 | sed 's/^/part {k} /'" for k in range(40)] + [
        # As many sub-tasks as an item may have, each printing 20 KB of invalid UTF-8 to both
        # streams (a replacement character takes 3 bytes stored for each byte printed).
        f"noisy|S|head -c 20000 /dev/zero | tr '\\0' '\\377' | tee /dev/stderr; echo {k}" for k in range(noisy)]
    assert cli("import", table, str(write_task_file(tmp_path / "t.txt", rows)), env=aws_env).returncode == 0
    started = time.monotonic()
    worker = workers.start(table, "--lease", "10", "--timeout", "4", "--max-attempts", "1", "--items", "2")
    assert worker.wait(timeout=300) == 3  # "binary" and "silent" fail
    elapsed = time.monotonic() - started
    queue = TaskQueue(client, table)
    sizes = {i: item_size(client, table, i) for i in ("huge", "binary", "silent", "wide", "noisy")}
    assert max(sizes.values()) < ITEM_LIMIT_BYTES / 2, sizes

    huge = queue.get("huge")
    assert huge.state is ItemState.DONE
    summary = huge.log_summary["Task_0"]
    assert summary["Bytes"] == megabytes * 1024 * 1024 + megabytes * 1024 * 1024 // 1000
    full = Path(summary["Log_Location"]) / "stdout"
    assert full.stat().st_size == summary["Bytes"]  # the whole log is on disk
    assert huge.logs["Task_0"]["stdout"].startswith("…")

    binary = queue.get("binary")
    assert binary.state is ItemState.FAILED and binary.subtasks[0].exit_code == 3
    assert binary.logs["Task_0"]["stderr"] == "\ufffd\ufffd\ufffd"  # replaced, not a crash

    silent = queue.get("silent")
    assert silent.state is ItemState.FAILED and silent.subtasks[0].exit_code == 124
    assert silent.log_summary["Task_0"]["Timed_Out"] is True
    assert silent.last_error == "Task_0: timed out after 4s"
    time.sleep(max(0.0, 9 - (time.monotonic() - started)))
    assert not marker.exists(), "the timeout left a process of the group running"

    wide = queue.get("wide")
    assert wide.state is ItemState.DONE and len(wide.subtasks) == 40
    loud = queue.get("noisy")
    assert loud.state is ItemState.DONE and len(loud.subtasks) == noisy
    assert sizes["noisy"] < ITEM_BUDGET_BYTES, sizes
    Figures("7. huge and hostile output", runs=1, items=5, subtasks=44 + noisy,
            faults=f"{megabytes} MB + 5 MB of output, binary and invalid UTF-8, a silent sub-task past --timeout 4, "
                   f"an item of {noisy} sub-tasks each printing 20 KB of invalid UTF-8 to both streams",
            **measured(queue, {"huge": ItemState.DONE, "binary": ItemState.FAILED, "silent": ItemState.FAILED,
                               "wide": ItemState.DONE, "noisy": ItemState.DONE},
                       Analysis(executions(workers.processes), stopped=interruptions(workers.processes))),
            recovery=f"largest item {max(sizes.values()) // 1024} KB of 400 KB (the {noisy}-sub-task one "
                     f"{sizes['noisy'] // 1024} KB); timeout killed the whole process tree; "
                     f"{elapsed:.1f} s in all").save()
