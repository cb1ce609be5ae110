"""Scenario 9: `pyanamo reset` and `pyanamo import --replace` while workers run."""

from __future__ import annotations

import time

from pyanamo.queue import TaskQueue
from pyanamo.schema import ItemState

from faultkit import STOPPED, Analysis, Figures, interruptions, measured
from helpers import cli, wait_for, write_task_file

ANCHOR_SECONDS = 20
# An anchor counts as running (so `import --replace` must leave it alone) only while more than
# this is left of its run: a `pyanamo import` on a busy machine takes seconds to start and finish.
REPLACE_MARGIN = 12


def test_admin_commands_during_a_run(aws_env, client, table, tmp_path, workers, recorder, soak):
    rows = [f"n{n:02d}|S|{recorder.command(0.3)} {k}" for n in range(60 if soak else 30) for k in range(2)]
    anchors = [f"anchor{n}" for n in range(3)]
    rows += [f"{a}|A|{recorder.command(ANCHOR_SECONDS)}" for a in anchors]
    assert cli("import", table, str(write_task_file(tmp_path / "t.txt", rows)), env=aws_env).returncode == 0
    queue = TaskQueue(client, table)
    for _ in range(3):
        workers.start(table, "--lease", "10", "--items", "2")  # room for renewals on a busy machine

    def running_anchors() -> list[str]:
        """Anchors whose single run started recently enough to outlast an import, still going."""
        now = time.time()
        return [r.item for r in recorder.runs()
                if r.item in anchors and r.end is None and now - r.start < ANCHOR_SECONDS - REPLACE_MARGIN]

    revoked = wait_for(lambda: running_anchors()[:1], timeout=60, message="an anchor running")[0]
    proc = cli("reset", table, revoked, env=aws_env)
    assert f"revoked {revoked} from" in proc.stdout, proc.stdout
    resets = replaces = new_items = refused = 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        proc = cli("reset", table, "--state", "locked", env=aws_env)
        assert proc.returncode == 0, proc.stderr
        # Only an expired lease may be reset: here that can only be the revoked item, once its
        # old lease has run out (its holder stopped it at revocation).
        changed = [line for line in proc.stdout.splitlines() if line.startswith("reset ") and ": " in line]
        assert all(line.startswith(f"reset {revoked}: locked -> todo") for line in changed), proc.stdout
        resets += 1
        live = [a for a in running_anchors() if a != revoked]
        fresh = f"new{new_items:02d}"
        replacement = [f"{a}|A|echo REPLACED" for a in live] + [f"{fresh}|N|{recorder.command(0.1)}"]
        proc = cli("import", table, str(write_task_file(tmp_path / "r.txt", replacement)), "--replace", env=aws_env)
        assert proc.returncode == 0, proc.stderr
        if live:
            assert f"left {len(live)} items untouched that workers are running now" in proc.stdout, proc.stdout
            refused += len(live)
        replaces += 1
        new_items += 1
        time.sleep(0.3)
    assert all(code == 0 for code in workers.wait_all(timeout=300))
    wait_for(lambda: not queue.any_in_state(ItemState.LOCKED) and not queue.any_in_state(ItemState.TODO),
             timeout=60, message="queue drained")
    # A straggler may still hold the revoked anchor's expired lease: one more worker finishes it.
    assert workers.start(table, "--lease", "10").wait(timeout=60) == 0

    for item_id in [r.split("|")[0] for r in rows] + [f"new{n:02d}" for n in range(new_items)]:
        item = queue.get(item_id)
        assert item.state is ItemState.DONE, item_id
        assert "REPLACED" not in item.subtasks[0].script, f"{item_id} was replaced while a worker ran it"
    analysis = Analysis(recorder.runs(), stopped=interruptions(workers.processes))
    assert analysis.overlaps() == []
    assert min(analysis.completed().values()) >= 1
    duplicates = analysis.duplicates()
    assert duplicates == {STOPPED: 1}, duplicates  # only the revoked anchor
    assert refused > 0
    Figures("9. concurrent admin", runs=1, items=len({r.split("|")[0] for r in rows}) + new_items,
            subtasks=len(rows) + new_items,
            faults=f"{resets} `reset --state locked`, {replaces} `import --replace` ({refused} live items "
                   f"refused, {new_items} new items), 1 forced reset of a running item",
            **measured(queue, {i: ItemState.DONE for i in [r.split("|")[0] for r in rows]
                               + [f"new{n:02d}" for n in range(new_items)]}, analysis),
            recovery="no live item was touched except the one named").save()
