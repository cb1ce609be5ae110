"""Scenario 11: an item whose sub-task kills its worker (out of memory, `kill` of its parent)
fails after --max-claims workers left it, instead of cycling through the fleet for ever."""

from __future__ import annotations

import time

from pyanamo.queue import TaskQueue
from pyanamo.schema import ItemState

from faultkit import Analysis, Figures, executions, measured
from helpers import cli, write_task_file

# The worker's process ID is in every sub-task's environment (runner.MARKER); its supervisor's
# parent is the worker's fork server, not the worker.
KILL_THE_WORKER = "kill -9 $PYANAMO_SUPERVISED_BY; sleep 5"


def test_an_item_that_kills_its_workers_fails_after_max_claims(aws_env, client, table, tmp_path, workers):
    runs = tmp_path / "poison-runs"
    rows = [f"poison|S|echo run >> {runs}; {KILL_THE_WORKER}"] + [f"fine{n}|S|echo fine {n}" for n in range(5)]
    assert cli("import", table, str(write_task_file(tmp_path / "t.txt", rows)), env=aws_env).returncode == 0
    codes, killed_at = [], {}
    started = time.monotonic()
    for n in range(6):
        name = f"w{n}"
        worker = workers.start(table, "--lease", "3", "--max-claims", "3", name=name, env={"AWS_BATCH_JOB_ID": name})
        codes.append(worker.wait(timeout=60))
        killed_at[name] = time.time()  # the sub-task's tree died with its worker, at the latest now
        if codes[-1] != -9:
            break
    elapsed = time.monotonic() - started
    assert codes == [-9, -9, -9, 3], codes  # three died on it; the fourth failed it and drained
    assert runs.read_text().count("run") == 3
    queue = TaskQueue(client, table)
    poison = queue.get("poison")
    assert poison.state is ItemState.FAILED
    assert poison.last_error.startswith("abandoned by 3 workers (last: w2)"), poison.last_error
    assert all(queue.get(f"fine{n}").state is ItemState.DONE for n in range(5))
    assert b"abandoned by 3 workers" in workers.processes[-1].log_path.read_bytes()
    Figures("11. an item that kills its worker", runs=1, items=6, subtasks=6,
            faults="a sub-task that SIGKILLs its worker, every time it runs",
            **measured(queue, {"poison": ItemState.FAILED, **{f"fine{n}": ItemState.DONE for n in range(5)}},
                       Analysis(executions(workers.processes), killed_at)),
            recovery=f"failed after 3 abandoned claims (--max-claims 3); the other 5 items done; "
                     f"{elapsed:.1f} s in all").save()
