"""Scenario 3: the endpoint refuses, then stalls, connections for 15 s in the middle of a run."""

from __future__ import annotations

import threading
import time

from pyanamo.queue import TaskQueue
from pyanamo.schema import ItemState

from faultkit import NOT_RECORDED, STOPPED, Analysis, FaultProxy, Figures, interruptions, measured
from helpers import cli, wait_for, write_task_file

ALLOWED_RERUNS = {STOPPED, NOT_RECORDED}


def test_endpoint_outage(aws_env, dynamodb_url, client, table, tmp_path, workers, recorder, soak):
    items, seconds, outage = (60 if soak else 30), 0.5, 15.0
    rows = [f"o{n:02d}|S|{recorder.command(seconds)} {k}" for n in range(items) for k in range(2)]
    assert cli("import", table, str(write_task_file(tmp_path / "t.txt", rows)), env=aws_env).returncode == 0
    queue = TaskQueue(client, table)
    with FaultProxy(dynamodb_url) as proxy:
        via_proxy = {"AWS_ENDPOINT_URL_DYNAMODB": proxy.url}
        for _ in range(3):
            workers.start(table, "--lease", "3", env=via_proxy)
        wait_for(lambda: len(recorder.runs()) >= 6, message="work under way")
        began = time.monotonic()
        fault = threading.Thread(target=lambda: (proxy.refuse(outage / 2), proxy.stall(outage / 2)))
        fault.start()
        fault.join()
        ended = time.monotonic()
        codes = workers.wait_all(timeout=300)
        recovered = time.monotonic() - ended
    assert codes == [0, 0, 0], "workers must ride out the outage"
    assert ended - began >= outage
    for n in range(items):
        assert queue.get(f"o{n:02d}").state is ItemState.DONE
    analysis = Analysis(recorder.runs(), stopped=interruptions(workers.processes))
    assert analysis.overlaps() == []
    assert min(analysis.completed().values()) >= 1 and len(analysis.completed()) == 2 * items
    duplicates = analysis.duplicates()
    assert set(duplicates) <= ALLOWED_RERUNS, duplicates
    abandoned = sum(w.log_path.read_bytes().count(b'"event": "item_abandoned"') for w in workers.processes)
    Figures("3. endpoint outage", runs=1, items=items, subtasks=2 * items,
            faults=f"{outage / 2:.1f} s refused + {outage / 2:.1f} s stalled ({proxy.counts['stalled']} requests "
                   f"stalled); {abandoned} items abandoned before their lease ran out",
            **measured(queue, {f"o{n:02d}": ItemState.DONE for n in range(items)}, analysis),
            recovery=f"{recovered:.1f} s from the end of the outage to drained").save()
