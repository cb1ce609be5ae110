"""Scenarios 24 and 25: a sub-task never outlives its lease, nor its supervisor.

24: the worker alone is paused (SIGSTOP; Ctrl-Z, that is SIGTSTP to its process group) for
longer than its lease while its sub-task runs in its own session. The sub-task's supervisor holds
the lease deadline on its own monotonic clock and kills it before another worker may reclaim the
item. Before, the paused worker's sub-task ran on beside the next owner's run (13.9 s of overlap
under SIGSTOP, 20.5 s under Ctrl-Z).

25: the supervisor is SIGKILLed (by the OOM killer, or by the sub-task itself): the worker, the
subreaper of last resort, kills what it left, and records the run as "supervisor killed" (exit
125), never as the sub-task's own SIGKILL."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from pyanamo.queue import TaskQueue
from pyanamo.schema import ItemState

from faultkit import Figures
from helpers import cli, supervisor_of, wait_for, write_task_file

TICK = 0.1


def ticker(folder: Path, seconds: float) -> str:
    """A sub-task that writes the time every TICK seconds into a file of its own execution."""
    return (f"for i in $(seq 1 {int(seconds / TICK)}); do date +%s.%N >> {folder}/ticks.$$; sleep {TICK}; done")


def executions(folder: Path) -> list[tuple[float, float]]:
    """Each execution's first and last tick, in the order they started."""
    spans = []
    for path in folder.glob("ticks.*"):
        ticks = [float(t) for t in path.read_text().split()]
        if ticks:
            spans.append((ticks[0], ticks[-1]))
    return sorted(spans)


def overlap_seconds(spans: list[tuple[float, float]]) -> float:
    return sum(max(0.0, a_end - b_start) for (_, a_end), (b_start, _) in zip(spans, spans[1:], strict=False))


@pytest.mark.parametrize("pause", ["SIGSTOP", "Ctrl-Z"])
def test_a_paused_workers_subtask_dies_before_the_lease_can_be_reclaimed(
        aws_env, client, table, tmp_path, workers, pause):
    lease, ticks = 4, tmp_path / "ticks"
    ticks.mkdir()
    tasks = write_task_file(tmp_path / "t.txt", [f"p|S|{ticker(ticks, 12)}"])
    assert cli("import", table, str(tasks), env=aws_env).returncode == 0
    paused = workers.start(table, "--lease", str(lease), name="paused")
    wait_for(lambda: executions(ticks), timeout=60, message="the first run's first tick")
    if pause == "SIGSTOP":
        os.kill(paused.pid, signal.SIGSTOP)
    else:  # Ctrl-Z stops the terminal's foreground process group: the worker's, not the sub-task's
        # session. (SIGTSTP itself is discarded in a group without a terminal, so it is SIGSTOP here.)
        os.killpg(paused.pid, signal.SIGSTOP)
    stopped_at = time.time()
    other = workers.start(table, "--lease", str(lease), name="other")
    assert other.wait(timeout=120) == 0
    os.killpg(paused.pid, signal.SIGCONT)
    assert paused.wait(timeout=60) == 0
    assert TaskQueue(client, table).get("p").state is ItemState.DONE
    spans = executions(ticks)
    assert len(spans) == 2
    first_killed_after = spans[0][1] - stopped_at
    assert overlap_seconds(spans) == 0, spans
    assert first_killed_after < lease, "the supervisor kills at most a lease after the last renewal"
    Figures(f"24{'a' if pause == 'SIGSTOP' else 'b'}. the worker alone paused ({pause}) past its lease",
            runs=1, items=1, subtasks=1, lost=0, overlaps=0, duplicates=1,
            why={"stopped by its supervisor at the lease deadline, run again": 1},
            faults=f"worker {pause} for {time.time() - stopped_at:.0f} s on a {lease} s lease, "
                   f"its sub-task in its own session",
            recovery=f"overlap 0.0 s; the paused worker's sub-task was killed {first_killed_after:.1f} s "
                     f"after the pause, before the lease ran out").save()


def test_a_killed_supervisors_subtask_is_killed_and_never_recorded_as_its_own_sigkill(
        aws_env, client, table, tmp_path, workers):
    ticks = tmp_path / "ticks"
    ticks.mkdir()
    rows = [f"s|S|{ticker(ticks, 30)}",
            "own|S|kill -9 $PPID; sleep 1"]  # a sub-task that kills its own parent
    assert cli("import", table, str(write_task_file(tmp_path / "t.txt", rows)), env=aws_env).returncode == 0
    worker = workers.start(table, "--lease", "10", "--max-attempts", "1", "--items", "1")
    wait_for(lambda: executions(ticks), timeout=60, message="the ticking sub-task")
    os.kill(supervisor_of(worker.pid), signal.SIGKILL)
    killed_at = time.time()
    assert worker.wait(timeout=60) == 3  # items failed
    spans = executions(ticks)
    assert len(spans) == 1 and spans[0][1] - killed_at < 1.0, "the orphaned sub-task was killed at once"
    queue = TaskQueue(client, table)
    for item_id in ("s", "own"):
        item = queue.get(item_id)
        assert item.state is ItemState.FAILED and item.subtasks[0].exit_code == 125, item.last_error
        assert "its supervisor process was killed" in item.last_error and "out of memory" not in item.last_error
    Figures("25. the supervisor SIGKILLed", runs=1, items=2, subtasks=2, lost=0, overlaps=0, duplicates=0,
            why={}, faults="a sub-task's supervisor SIGKILLed from outside; a sub-task that kills its own parent",
            recovery=f"the orphaned sub-task killed by the worker (subreaper): its last tick "
                     f"{max(0.0, spans[0][1] - killed_at):.2f} s after the kill (a tick every {TICK} s); both "
                     f"recorded as exit 125 'supervisor killed', not as SIGKILL").save()
