"""Scenario 1: workers SIGKILLed at random while new ones start; nothing lost, nothing overlaps."""

from __future__ import annotations

import random
import time

from pyanamo.queue import TaskQueue
from pyanamo.schema import ItemState

from faultkit import KILLED_BEFORE_RECORDING, KILLED_MID_RUN, Analysis, Figures, interruptions, measured
from helpers import cli, kill_tree, wait_for, write_task_file

ALLOWED_RERUNS = {KILLED_MID_RUN, KILLED_BEFORE_RECORDING}


def test_chaos_kills(aws_env, client, table, tmp_path, workers, recorder, soak):
    items, subtasks, seconds, pool = 150, 3, (0.5 if soak else 0.1), 6
    rows = [f"c{n:03d}|S|{recorder.command(seconds)} {k}" for n in range(items) for k in range(subtasks)]
    assert cli("import", table, str(write_task_file(tmp_path / "t.txt", rows)), env=aws_env).returncode == 0
    queue = TaskQueue(client, table)
    rng = random.Random(1)
    names = iter(f"w{n:02d}" for n in range(1000))

    def start() -> None:
        name = next(names)
        # A 10 s lease: renewals every 3.3 s, given up 2.5 s before expiry. With 5 s (1.25 s of
        # margin) a renewal on 2 cores shared with other work could land too late.
        live[name] = workers.start(table, "--lease", "10", name=name, env={"AWS_BATCH_JOB_ID": name})

    live: dict = {}
    for _ in range(pool):
        start()
    killed_at: dict[str, float] = {}
    started = time.monotonic()
    while queue.any_in_state(ItemState.TODO) and time.monotonic() - started < 600:
        time.sleep(rng.uniform(1, 3))
        running = [n for n, p in live.items() if p.poll() is None]
        if not running:
            break
        victim = rng.choice(running)
        kill_tree(live.pop(victim).pid)
        # The kill is complete only now: a sub-task may still write its end record while the
        # tree is being frozen, and that run was killed before its result could be recorded.
        killed_at[victim] = time.time()
        start()
    last_kill = time.monotonic()
    start()  # a fresh worker to pick up what the last victims held, whatever the others do
    assert all(code in (0, -9) for code in workers.wait_all(timeout=300))
    wait_for(lambda: not queue.any_in_state(ItemState.LOCKED) and not queue.any_in_state(ItemState.TODO),
             timeout=60, message="queue drained")
    recovered = time.monotonic() - last_kill

    analysis = Analysis(recorder.runs(), killed_at, interruptions(workers.processes))
    completed = analysis.completed()
    final = {}
    for n in range(items):
        item = queue.get(f"c{n:03d}")
        final[item.item_id] = item
        assert item.state is ItemState.DONE, item.item_id
    assert len(completed) == items * subtasks and min(completed.values()) >= 1
    assert analysis.overlaps() == []
    duplicates = analysis.duplicates()
    assert set(duplicates) <= ALLOWED_RERUNS, duplicates
    # Every stored result is the one from the run that counted: never a stale worker's write.
    by_subtask = analysis.by_subtask()
    for (item_id, key), runs in by_subtask.items():
        last_done = [r for r in runs if r.end is not None][-1]
        assert final[item_id].logs[key]["stdout"] == f"ran by {last_done.worker}\n", (item_id, key)

    Figures("1. chaos kills", runs=1, items=items, subtasks=items * subtasks, workers_started=len(killed_at) + pool + 1,
            faults=f"{len(killed_at)} SIGKILLs",
            **measured(queue, {f"c{n:03d}": ItemState.DONE for n in range(items)}, analysis),
            recovery=f"{recovered:.1f} s from the last kill to drained").save()
