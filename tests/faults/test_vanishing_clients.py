"""Scenario 20: clients that vanish mid-request — busy workers SIGKILLed over and over, and
connections dropped halfway through a request body — never take the endpoint down.

dynalite rethrows a request's "aborted" error and exits; before `pyanamo local` ran it through
its own server script, this ended every in-memory queue after a few dozen kills."""

from __future__ import annotations

import random
import socket
import struct
import time

from pyanamo.queue import TaskQueue
from pyanamo.schema import ItemState

from faultkit import KILLED_BEFORE_RECORDING, KILLED_MID_RUN, Analysis, Figures, interruptions, measured
from helpers import cli, kill_tree, wait_for, write_task_file

HALF_REQUEST = (b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-amz-json-1.0\r\n"
                b"X-Amz-Target: DynamoDB_20120810.PutItem\r\nContent-Length: 4096\r\n\r\n{\"TableName\": ")


def drop_mid_request(url: str) -> None:
    """Send half a request, then reset the connection (what a SIGKILLed client's kernel does)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(HALF_REQUEST)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST on close


def test_clients_that_vanish_mid_request_never_stop_the_endpoint(
        aws_env, dynamodb_url, client, table, tmp_path, workers, recorder, soak):
    kills, drops, pool = (300, 300, 4) if soak else (15, 100, 3)
    items = 40 * kills // 10 + 20
    rows = [f"v{n:04d}|S|{recorder.command(0.05)} {n}" for n in range(items)]
    assert cli("import", table, str(write_task_file(tmp_path / "t.txt", rows)), env=aws_env).returncode == 0
    queue = TaskQueue(client, table)
    rng = random.Random(20)
    names = iter(f"w{n:03d}" for n in range(10_000))
    live: dict = {}

    def start() -> None:
        name = next(names)  # claims are not capped: the kills here are the endpoint's test, not the item's
        live[name] = workers.start(table, "--lease", "10", "--max-claims", "1000", name=name,
                                   env={"AWS_BATCH_JOB_ID": name})

    for _ in range(pool):
        start()
    wait_for(lambda: recorder.runs(), message="work under way")
    killed_at: dict[str, float] = {}
    for n in range(max(kills, drops)):
        if n < drops:
            drop_mid_request(dynamodb_url)
        if n < kills:
            running = [name for name, p in live.items() if p.poll() is None]
            if running:
                victim = rng.choice(running)
                time.sleep(rng.uniform(0.05, 0.4))  # somewhere in its claim, run, record cycle
                kill_tree(live.pop(victim).pid)
                killed_at[victim] = time.time()
            start()
    client.list_tables()  # still serving
    start()  # a fresh worker for what the last victims held
    assert all(code in (0, -9) for code in workers.wait_all(timeout=300))
    wait_for(lambda: not queue.any_in_state(ItemState.LOCKED) and not queue.any_in_state(ItemState.TODO),
             timeout=60, message="queue drained")

    analysis = Analysis(recorder.runs(), killed_at, interruptions(workers.processes))
    expected = {f"v{n:04d}": ItemState.DONE for n in range(items)}
    figures = measured(queue, expected, analysis)
    assert figures["lost"] == 0
    assert figures["overlaps"] == 0
    assert set(figures["why"]) <= {KILLED_MID_RUN, KILLED_BEFORE_RECORDING}, figures["why"]
    Figures("20. clients vanishing mid-request", runs=1, items=items, subtasks=items,
            faults=f"{kills} busy workers SIGKILLed, {drops} connections reset halfway through a request",
            recovery="endpoint still serving: 0 crashes", **figures).save()
