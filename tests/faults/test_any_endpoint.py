"""Scenario 14: an endpoint that omits the old item from a failed conditional write (dynalite
ignores ReturnValuesOnConditionCheckFailure). Given-back and reclaimed items, whose first
sub-task is no longer todo, are still claimed; a stopping worker is never stuck in a claim."""

from __future__ import annotations

import signal
import time

from pyanamo.aws import Endpoint, dynamodb_client
from pyanamo.gateway import SubtaskResult
from pyanamo.model import Item, Subtask
from pyanamo.queue import Candidate, TaskQueue
from pyanamo.runner import KILL_GRACE_SECONDS
from pyanamo.runs import RunRecord
from pyanamo.schema import ItemState, SubtaskStatus

from faultkit import Analysis, FaultProxy, Figures, executions, interruptions, measured
from helpers import put_items, wait_for


def two_step(item_id: str) -> Item:
    return Item(item_id, "T", (Subtask("Task_0", f"echo {item_id} 0"), Subtask("Task_1", f"echo {item_id} 1")))


def given_back(client, table: str, item_ids: list[str]) -> None:
    """Items whose Task_0 is done and that were given back (as after SIGTERM or a Spot notice)."""
    put_items(client, table, [two_step(i) for i in item_ids])
    queue = TaskQueue(client, table, owner="earlier", lease_seconds=30)
    for item_id in item_ids:
        _, lease = queue._try_claim(Candidate(item_id))
        queue.record(lease, SubtaskResult("Task_0", SubtaskStatus.DONE, 1, 0, {"stdout": "", "stderr": ""},
                                          RunRecord()))
        queue.release(lease, ["Task_1"])


def test_claims_without_the_old_item_in_the_failure(aws_env, client, table, workers, engine):
    items = [f"back{n}" for n in range(10)]
    given_back(client, table, items)
    with FaultProxy(aws_env["AWS_ENDPOINT_URL_DYNAMODB"], strip_old_item=True) as proxy:
        direct = TaskQueue(dynamodb_client(Endpoint(proxy.url)), table, owner="direct", lease_seconds=30)
        got = direct.claim()
        assert got is not None and [s.status for s in got[0].subtasks] == [SubtaskStatus.DONE, SubtaskStatus.TODO]
        direct.release(got[1], ["Task_1"])
        started = time.monotonic()
        worker = workers.start(table, "--lease", "10", env={"AWS_ENDPOINT_URL_DYNAMODB": proxy.url,
                                                            "AWS_ENDPOINT_URL": proxy.url})
        assert worker.wait(timeout=60) == 0
        elapsed = time.monotonic() - started
        stripped = proxy.counts["old_item_stripped"]
    queue = TaskQueue(client, table)
    for item_id in items:
        item = queue.get(item_id)
        assert item.state is ItemState.DONE and item.logs["Task_1"]["stdout"] == f"{item_id} 1\n"
        assert item_id not in item.logs.get("Task_0", {}).get("stdout", "")  # Task_0 not run again
    # moto returns the old item and the proxy strips it; dynalite never returns it (the case itself)
    assert stripped >= len(items) if engine == "moto" else stripped == 0
    Figures("14. endpoint without ReturnValuesOnConditionCheckFailure", runs=1, items=len(items),
            subtasks=2 * len(items),
            faults=(f"{stripped} failed conditional writes answered without the old item (as dynalite does)"
                    if engine == "moto" else "dynalite, which never returns the old item of a failed "
                                             "conditional write; a claim mid-item (Task_0 done) on each item"),
            **measured(queue, {i: ItemState.DONE for i in items}, Analysis(executions(workers.processes))),
            recovery=f"every given-back item claimed after a consistent read; drained in {elapsed:.1f} s").save()


def test_a_worker_stops_within_the_grace_while_the_endpoint_stalls(aws_env, client, table, workers, recorder):
    put_items(client, table, [Item(f"s{n}", "T", (Subtask("Task_0", recorder.command(0.2)),)) for n in range(200)])
    with FaultProxy(aws_env["AWS_ENDPOINT_URL_DYNAMODB"]) as proxy:
        worker = workers.start(table, "--lease", "60", env={"AWS_ENDPOINT_URL_DYNAMODB": proxy.url,
                                                            "AWS_ENDPOINT_URL": proxy.url})
        wait_for(lambda: len(recorder.runs()) >= 2, message="the worker running items")
        proxy._stall_until = time.monotonic() + 60  # every request hangs from now on
        time.sleep(1.0)
        sent = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(timeout=30)
        stopped = time.monotonic() - sent
    assert code == 128 + signal.SIGTERM
    assert stopped < 12, stopped  # designed: within 10 s (kill grace 5 s + 5 s); 2 s more for a busy machine
    queue = TaskQueue(client, table)  # every item is still there: done, todo, or held until its lease runs out
    lost = sum(queue.get(f"s{n}") is None or queue.get(f"s{n}").state is ItemState.FAILED for n in range(200))
    assert lost == 0  # designed bound: kill grace 5 s + 5 s, plus the interpreter's exit
    Figures("15. stop during an endpoint stall", runs=1, items=200, subtasks=200,
            faults="every request stalled for 60 s, then SIGTERM",
            **{**measured(TaskQueue(client, table), {},
                          Analysis(executions(workers.processes), stopped=interruptions(workers.processes))),
               "lost": lost},
            recovery=f"worker exited {stopped:.1f} s after SIGTERM (bound: {KILL_GRACE_SECONDS + 5:g} s); "
                     "its item is reclaimed when the lease runs out").save()
