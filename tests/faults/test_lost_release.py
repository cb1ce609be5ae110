"""Scenario 31: a worker SIGKILLed between its `done` write of an item and the release of the
item that waits for it. The proxy holds the release's first request (the one that strikes the
upstream off the dependent's Waiting_On), the worker is killed there, and the next worker's drain
check makes the release: the dependent runs once, nothing is lost."""

from __future__ import annotations

import os
import signal
import time

from pyanamo.gateway import TableGateway
from pyanamo.schema import ItemState

from faultkit import FaultProxy, Figures
from helpers import cli, write_task_file


def test_a_release_lost_with_a_killed_worker_is_made_by_the_next_one(aws_env, client, dynamodb_url, table, tmp_path,
                                                                       workers):
    ran = tmp_path / "down-ran"
    rows = ["up|A|true|", f"down|B|echo once >> {ran}|up"]
    assert cli("import", table, str(write_task_file(tmp_path / "t.txt", rows, header="itemID|taskID|TaskScript|After")),
               env=aws_env).returncode == 0
    gateway = TableGateway(client, table)
    with FaultProxy(dynamodb_url) as proxy:
        proxy.hold = lambda body: b"DELETE" in body and b"Waiting_On" in body
        victim = workers.start(table, "--lease", "30", env={"AWS_ENDPOINT_URL_DYNAMODB": proxy.url}, name="victim")
        assert proxy.held.wait(90), "the worker never started the release"
        os.killpg(victim.pid, signal.SIGKILL)  # between its `done` write and the release
        victim.wait(timeout=30)
        workers.processes.remove(victim)
    assert gateway.get("up").state is ItemState.DONE and gateway.get("down").state is ItemState.WAITING
    killed = time.monotonic()
    assert workers.start(table, "--lease", "30", name="next").wait(timeout=90) == 0
    recovered = time.monotonic() - killed
    assert gateway.get("down").state is ItemState.DONE and ran.read_text() == "once\n"
    Figures("31. a worker killed between an item's done and its release", runs=1, items=2, subtasks=2, lost=0,
            overlaps=0, duplicates=0, why={},
            faults="the worker that ended the upstream SIGKILLed before its first release request reached the "
                   "endpoint (a proxy held it)",
            recovery=f"the next worker's drain check settled the waiting item and ran it once; "
                     f"{recovered:.1f} s from its start to its exit").save()
