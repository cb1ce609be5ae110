"""Fault injection for the reliability suite: a misbehaving proxy, and what the runs show."""

from __future__ import annotations

import http.client
import json
import os
import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

from pyanamo.local import free_port
from pyanamo.local_secret import PROOF_HEADER

from helpers import Run

THROTTLING_ERRORS = (
    "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException",
    "com.amazon.coral.availability#ThrottlingException",
)


class FaultProxy:
    """An HTTP proxy between workers and moto's server.

    Modes: ``pass`` forwards; ``refuse`` closes the listening socket (connection refused);
    ``stall`` accepts, reads the request and never answers until the stall ends, then drops the
    connection. With ``throttle`` > 0, that share of requests gets DynamoDB's HTTP 400 throttling
    errors instead of an answer, as does every request whose body ``throttle_when`` matches. With
    ``strip_old_item``, a failed conditional write comes back
    without the old item, as dynalite answers (it ignores ReturnValuesOnConditionCheckFailure).
    Every request is forwarded on a fresh connection, so a mode
    change takes effect for the next request.
    """

    def __init__(self, upstream: str, throttle: float = 0.0, seed: int = 7, strip_old_item: bool = False) -> None:
        parsed = urlparse(upstream)
        self.upstream = (parsed.hostname, parsed.port)
        self.throttle = throttle
        self.strip_old_item = strip_old_item
        self.random = random.Random(seed)
        self.counts: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()
        self._stall_until = 0.0
        # ``hold``: a request whose body it matches is never forwarded nor answered; ``held`` is set
        # when one arrives (a test kills its sender then), ``release`` lets the handler go
        self.hold: Callable[[bytes], bool] | None = None
        self.throttle_when: Callable[[bytes], bool] | None = None
        self.held = threading.Event()
        self.release = threading.Event()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: ThreadingHTTPServer | None = None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self.close_connection = True
                if proxy.hold is not None and proxy.hold(body):
                    proxy._count("held")
                    proxy.held.set()
                    proxy.release.wait(120)
                    return  # never forwarded, never answered
                stall = proxy._stall_until - time.monotonic()
                if stall > 0:
                    proxy._count("stalled")
                    time.sleep(stall)
                    return  # no answer at all: the client sees the connection drop
                with proxy._lock:
                    throttled = proxy.throttle and proxy.random.random() < proxy.throttle
                    throttled = throttled or (proxy.throttle_when is not None and proxy.throttle_when(body))
                    kind = proxy.random.choice(THROTTLING_ERRORS)
                if throttled:
                    proxy._count("throttled")
                    self._send(400, json.dumps({"__type": kind, "message": "Rate exceeded"}).encode(),
                               "application/x-amz-json-1.0")
                    return
                upstream = http.client.HTTPConnection(*proxy.upstream, timeout=30)
                try:
                    upstream.request("POST", self.path, body, {k: v for k, v in self.headers.items()})
                    response = upstream.getresponse()
                    data = response.read()
                finally:
                    upstream.close()
                proxy._count("forwarded")
                if proxy.strip_old_item and b"ConditionalCheckFailed" in data:
                    failure = json.loads(data)
                    if failure.pop("Item", None) is not None:
                        proxy._count("old_item_stripped")
                    data = json.dumps(failure).encode()
                self._send(response.status, data, response.getheader("Content-Type", "application/json"),
                           response.getheader(PROOF_HEADER))

            def _send(self, status: int, data: bytes, content_type: str, proof: str | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                if proof is not None:  # the endpoint's proof that it is the operator's (pyanamo.local_secret)
                    self.send_header(PROOF_HEADER, proof)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(data)

        return Handler

    def _count(self, what: str) -> None:
        with self._lock:
            self.counts[what] += 1

    def start(self) -> FaultProxy:
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def refuse(self, seconds: float) -> None:
        """Refuse connections for ``seconds`` (blocks), then listen again on the same port."""
        self.stop()
        self._count("refusals")
        time.sleep(seconds)
        self.start()

    def stall(self, seconds: float) -> None:
        """Stall every request for ``seconds`` (blocks)."""
        self._stall_until = time.monotonic() + seconds
        time.sleep(seconds)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.release.set()
        self._stall_until = 0.0
        self.stop()


def stored_size(value: dict) -> int:
    """A DynamoDB value's size as DynamoDB counts it: strings as UTF-8, numbers by their digits,
    maps by their names and values."""
    (kind, inner), = value.items()
    if kind == "M":
        return sum(len(k.encode()) + stored_size(v) for k, v in inner.items())
    if kind == "L":
        return sum(stored_size(v) for v in inner)
    if kind in ("BOOL", "NULL"):
        return 1
    return len(str(inner).encode())


def item_size(client, table: str, item_id: str) -> int:
    """The stored size of an item (attribute names plus values), as DynamoDB limits it."""
    return stored_size({"M": client.get_item(TableName=table, Key={"itemID": {"S": item_id}})["Item"]})


# -- what the runs show -------------------------------------------------------------------

# Why an execution did not count, as ``Analysis.duplicates`` says it.
KILLED_MID_RUN = "worker killed mid-run"
KILLED_BEFORE_RECORDING = "worker killed before recording the result"
STOPPED = "stopped by its worker (a stop, or a lost or revoked lease), run again"
NOT_RECORDED = "finished, but its result could not be recorded (lease lost)"


def interruptions(processes) -> dict[tuple[str, str, str], list[float]]:
    """When each worker reports having stopped and reaped a sub-task's processes."""
    found: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for process in processes:
        for line in process.log_path.read_text(errors="replace").splitlines():
            if '"subtask_interrupted"' in line:
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:  # the last line of a killed worker may be torn
                    continue
                stamp = datetime.fromisoformat(event["ts"].replace("Z", "+00:00")).timestamp()
                found[(event["item"], event["subtask"], process.name)].append(stamp)
    return found


@dataclass
class Analysis:
    """Executions per sub-task, from the run records, the kill times of killed workers, and
    the times workers report having stopped a run (``interruptions``)."""

    runs: list[Run]
    killed_at: dict[str, float] = field(default_factory=dict)
    stopped: dict[tuple[str, str, str], list[float]] = field(default_factory=dict)

    def _end(self, run: Run) -> float:
        """A run's end; an unfinished run ends when its worker stopped it or was killed."""
        if run.end is not None:
            return run.end
        stops = [t for t in self.stopped.get((run.item, run.subtask, run.worker), []) if t >= run.start]
        if stops:
            return min(stops)
        return self.killed_at.get(run.worker, float("inf"))

    def by_subtask(self) -> dict[tuple[str, str], list[Run]]:
        grouped: dict[tuple[str, str], list[Run]] = defaultdict(list)
        for run in self.runs:
            grouped[(run.item, run.subtask)].append(run)
        for runs in grouped.values():
            runs.sort(key=lambda r: r.start)
        return grouped

    def overlaps(self) -> list[tuple[str, str]]:
        """Sub-tasks two of whose executions ran at the same time (must be none)."""
        found = []
        for key, runs in self.by_subtask().items():
            if any(self._end(a) > b.start for a, b in zip(runs, runs[1:], strict=False)):
                found.append(key)
        return found

    def completed(self) -> dict[tuple[str, str], int]:
        return {key: sum(r.end is not None for r in runs) for key, runs in self.by_subtask().items()}

    def duplicates(self) -> dict[str, int]:
        """Extra executions of a sub-task, by why the earlier one did not count."""
        reasons: dict[str, int] = defaultdict(int)
        for runs in self.by_subtask().values():
            for run in runs[:-1]:
                killed = self.killed_at.get(run.worker)
                if run.end is None:
                    reasons[KILLED_MID_RUN if killed else STOPPED] += 1
                elif killed is not None and killed >= run.end:
                    reasons[KILLED_BEFORE_RECORDING] += 1
                else:
                    reasons[NOT_RECORDED] += 1
        return dict(reasons)


def _events(processes, names: set[str]):
    for process in processes:
        for line in process.log_path.read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:  # the last line of a killed worker may be torn
                continue
            if event.get("event") in names:
                stamp = datetime.fromisoformat(event["ts"].replace("Z", "+00:00")).timestamp()
                yield process.name, event, stamp


def executions(processes) -> list[Run]:
    """Every run of a sub-task, from the workers' own events (``subtask_started``, then
    ``subtask_finished`` or ``subtask_interrupted``): no run record needed in the script."""
    runs: list[Run] = []
    open_runs: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    for worker, event, stamp in _events(processes, {"subtask_started", "subtask_finished", "subtask_interrupted"}):
        key = (worker, event["item"], event["subtask"])
        if event["event"] == "subtask_started":
            open_runs[key].append(len(runs))
            runs.append(Run(event["item"], event["subtask"], worker, stamp, None))
        elif open_runs[key]:
            n = open_runs[key].pop(0)
            ended = runs[n]
            runs[n] = Run(ended.item, ended.subtask, ended.worker, ended.start,
                          stamp if event["event"] == "subtask_finished" else None)
    return runs


def measured(queue, expected: dict[str, object], analysis: Analysis) -> dict:
    """The measured columns of a scenario: items not in their expected final state (lost),
    overlapping executions, and extra executions with why."""
    lost = 0
    for item_id, state in expected.items():  # raw rows: malformed items cannot be parsed
        row = queue.client.get_item(TableName=queue.table, Key={"itemID": {"S": item_id}}).get("Item")
        lost += row is None or row.get("lockID", {}).get("S") != state.value
    duplicates = analysis.duplicates()
    return {"lost": lost, "overlaps": len(analysis.overlaps()), "duplicates": sum(duplicates.values()),
            "why": duplicates}


class Figures:
    """One scenario's figures; appended as a JSON line to $PYANAMO_FAULTS_REPORT when set
    (``make reliability`` renders them into docs/reliability.md)."""

    def __init__(self, scenario: str, **figures) -> None:
        self.row = {"scenario": scenario, **figures}

    def add(self, **figures) -> Figures:
        self.row.update(figures)
        return self

    def save(self) -> None:
        path = os.environ.get("PYANAMO_FAULTS_REPORT")
        if path:
            with open(path, "a") as handle:
                handle.write(json.dumps(self.row) + "\n")
