"""Scenario 18: two imports of the same items at once, while workers run them. Each item is
written once (conditional puts); nothing that ran is put back to todo and run again."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

from pyanamo.queue import TaskQueue
from pyanamo.schema import ItemState

from faultkit import Analysis, Figures, measured
from helpers import wait_for, write_task_file


def test_concurrent_imports_never_overwrite(aws_env, client, table, tmp_path, workers, recorder, soak):
    items = 2000 if soak else 400
    rows = [f"c{n:04d}|S|{recorder.command(0)}" for n in range(items)]
    task_file = write_task_file(tmp_path / "t.txt", rows)
    started = time.monotonic()
    imports = [subprocess.Popen([sys.executable, "-m", "pyanamo", "import", table, str(task_file)],
                                env={**os.environ, **aws_env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True) for _ in range(2)]
    # Workers start once the first items are in (a worker that finds an empty table exits at once:
    # drained), and run items while both imports are still writing.
    queue = TaskQueue(client, table)
    wait_for(lambda: queue.any_in_state(ItemState.TODO), timeout=120, message="the first imported item")
    for _n in range(2):
        workers.start(table, "--lease", "20", "--items", "2", "--linger", "15")
    outputs = [p.communicate(timeout=300) for p in imports]
    assert [p.returncode for p in imports] == [0, 0], outputs
    imported = [int(re.search(r"imported (\d+) items", out).group(1)) for out, _ in outputs]
    skipped = [int(m.group(1)) if (m := re.search(r"left (\d+) existing items", out)) else 0 for out, _ in outputs]
    assert sum(imported) == items and sum(skipped) == items, outputs
    assert workers.wait_all(timeout=300) == [0, 0]
    elapsed = time.monotonic() - started
    states = {n: queue.get(f"c{n:04d}").state for n in range(items)}
    not_done = [(n, s) for n, s in states.items() if s is not ItemState.DONE]
    assert not_done == []
    analysis = Analysis(recorder.runs())
    assert set(analysis.completed().values()) == {1} and analysis.duplicates() == {}
    Figures("18. concurrent imports", runs=1, items=items, subtasks=items,
            faults=f"two `pyanamo import` of the same {items} items at once, workers running them",
            **measured(queue, {f"c{n:04d}": ItemState.DONE for n in range(items)}, analysis),
            recovery=f"imported {imported[0]} + {imported[1]} = {items}, each item once; nothing ran twice; "
                     f"drained {elapsed:.1f} s after the imports began").save()
