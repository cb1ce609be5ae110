"""Scenario 26: workers whose clocks disagree by ±90 s (libfaketime) share one queue.

Leases are judged on the endpoint's clock (``pyanamo.clock``, from its answers' Date headers),
so a fast worker never takes a live lease, a slow holder never loses one, and a dead fast
worker's item is reclaimed after the lease, not the lease plus its skew. Before: 9.2 s and 7.2 s
of overlap, and a dead fast worker's item held 110 s on a 20 s lease."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from pyanamo.queue import TaskQueue
from pyanamo.schema import ItemState

from faultkit import Figures
from helpers import cli, kill_tree, wait_for, write_task_file

SKEW = 90
TICK = 0.2


def ticker(folder: Path, seconds: float) -> str:
    """Ticks on the true clock: `date` runs without the worker's faked time."""
    return (f"for i in $(seq 1 {int(seconds / TICK)}); do env -u LD_PRELOAD -u FAKETIME date +%s.%N "
            f">> {folder}/$PYANAMO_ITEM_ID.$$; sleep {TICK}; done")


def spans_by_item(folder: Path) -> dict[str, list[tuple[float, float]]]:
    found: dict[str, list[tuple[float, float]]] = {}
    for path in folder.iterdir():
        ticks = [float(t) for t in path.read_text().split()]
        if ticks:
            found.setdefault(path.name.rsplit(".", 1)[0], []).append((ticks[0], ticks[-1]))
    return {item: sorted(spans) for item, spans in found.items()}


def overlap(spans: list[tuple[float, float]]) -> float:
    return sum(max(0.0, a[1] - b[0]) for a, b in zip(spans, spans[1:], strict=False))


@pytest.fixture
def faketime():
    path = shutil.which("faketime")
    if path is None:
        pytest.skip("faketime is not installed (make test-tools installs it)")
    # A skewed wall clock; the monotonic clock is left alone, as it is on a real machine (faking
    # it too also hangs Python's timed waits under libfaketime).
    return lambda offset: ("env", "FAKETIME_DONT_FAKE_MONOTONIC=1", path, "-f", f"{offset:+d}s")


def test_workers_with_skewed_clocks_never_overlap_and_reclaim_on_time(
        aws_env, client, table, tmp_path, workers, faketime, soak):
    lease, items = 8, (12 if soak else 6)  # a margin of 2 s: twice the worst error of a skewed clock
    ticks = tmp_path / "ticks"
    ticks.mkdir()
    rows = [f"k{n:02d}|S|{ticker(ticks, 4)}" for n in range(items)]
    assert cli("import", table, str(write_task_file(tmp_path / "t.txt", rows)), env=aws_env).returncode == 0
    for name, offset in (("fast", SKEW), ("true", 0), ("slow", -SKEW)):
        workers.start(table, "--lease", str(lease), name=name, wrapper=faketime(offset))
    assert workers.wait_all(timeout=300) == [0, 0, 0]
    queue = TaskQueue(client, table)
    assert all(queue.get(f"k{n:02d}").state is ItemState.DONE for n in range(items))
    shared = spans_by_item(ticks)
    overlapped = sum(overlap(spans) for spans in shared.values())
    assert overlapped == 0, shared

    # A fast worker dies holding an item: the others wait the lease, not the lease plus 90 s.
    rows = [f"d|S|{ticker(ticks, 30)}"]
    assert cli("import", table, str(write_task_file(tmp_path / "d.txt", rows)), env=aws_env).returncode == 0
    dead = workers.start(table, "--lease", str(lease), name="dead-fast", wrapper=faketime(SKEW))
    wait_for(lambda: "d" in spans_by_item(ticks), timeout=60, message="the fast worker's run")
    kill_tree(dead.pid)
    killed = time.time()
    workers.start(table, "--lease", str(lease), name="after", wrapper=faketime(-SKEW))
    wait_for(lambda: len(spans_by_item(ticks)["d"]) == 2, timeout=lease + 60, message="the item reclaimed")
    reclaimed_after = spans_by_item(ticks)["d"][1][0] - killed
    assert reclaimed_after < lease + 10, reclaimed_after
    Figures("26. clocks skewed by ±90 s", runs=1, items=items + 1, subtasks=items + 1, lost=0, overlaps=0,
            duplicates=1, why={"worker killed mid-run": 1},
            faults=f"3 workers at +{SKEW} s, 0 s and -{SKEW} s (libfaketime) on a {lease} s lease; "
                   f"the fast one then SIGKILLed holding an item",
            recovery=f"overlap {overlapped:.1f} s; the dead fast worker's item reclaimed {reclaimed_after:.1f} s "
                     f"after the kill (lease {lease} s)").save()
