"""Helpers shared by the tests: CLI runs, task files, worker processes, run records."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import zipfile
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3

from pyanamo.model import Item

REPO = Path(__file__).resolve().parent.parent


def put_items(client, table: str, items: list[Item]) -> None:
    for item in items:
        client.put_item(TableName=table, Item=item.new_row())


def wait_active(client, table: str, timeout: float = 30) -> None:
    """Until ``table`` is ACTIVE: DynamoDB and dynalite refuse writes while it is CREATING."""
    deadline = time.monotonic() + timeout
    while client.describe_table(TableName=table)["Table"]["TableStatus"] != "ACTIVE":
        assert time.monotonic() < deadline, f"table {table} did not become ACTIVE"
        time.sleep(0.05)


def write_task_file(path: Path, rows: list[str], header: str = "itemID|taskID|TaskScript") -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


# Commands whose process is their subject (long-running, signals, children): always a subprocess.
PROCESS_COMMANDS = ("worker", "local")


def cli(*args: str, env: dict[str, str], cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run `pyanamo` as a user would and return what it printed and its exit status. A command
    that runs and returns (status, import, reset, report, ...) runs in this process through
    ``pyanamo.cli.main`` with the given environment and captured streams: the same code, exit
    status and output as ``python -m pyanamo``, without a Python start-up per call (on a loaded
    2-core machine that start-up dominated the suite). ``worker`` and ``local`` run in a real
    subprocess (``cli_process``), as does anything a test runs there on purpose."""
    if args and args[0] in PROCESS_COMMANDS:
        return cli_process(*args, env=env, cwd=cwd, timeout=timeout)
    return cli_in_process(*args, env=env, cwd=cwd)


def cli_in_process(*args: str, env: dict[str, str], cwd: Path | None = None,
                   stdin: bytes = b"") -> subprocess.CompletedProcess:
    """``pyanamo.cli.main(args)`` with ``env`` over this process's environment, ``cwd`` as the
    working folder, ``stdin`` as standard input, and its streams captured."""
    from pyanamo.cli import main

    saved_env, saved_cwd, saved_stdin = dict(os.environ), os.getcwd(), sys.stdin
    out, err = io.StringIO(), io.StringIO()
    os.environ.update(env)
    sys.stdin = io.TextIOWrapper(io.BytesIO(stdin))
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exc:  # argparse's usage errors and --help
                code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
                if isinstance(exc.code, str):
                    print(exc.code, file=sys.stderr)
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        sys.stdin = saved_stdin
    return subprocess.CompletedProcess(["pyanamo", *args], code, out.getvalue(), err.getvalue())


def cli_process(*args: str, env: dict[str, str], cwd: Path | None = None,
                timeout: float = 60) -> subprocess.CompletedProcess:
    """Run the real `pyanamo` command in a subprocess: where the process is the subject (exit
    on a signal, a closed pipe, its children, its start-up)."""
    return subprocess.run(
        [sys.executable, "-m", "pyanamo", *args],
        env={**os.environ, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def cli_after_first_line(*args: str, env: dict[str, str], then: Callable[[], object],
                         timeout: float = 60) -> subprocess.CompletedProcess:
    """Run `pyanamo` in a subprocess, call ``then`` once it has printed its first line of output,
    and wait for it to end: for commands that refresh (``status --watch``), so a test changes the
    table after the first refresh it saw, not after a timer that a slow start-up can outrun."""
    process = subprocess.Popen(
        [sys.executable, "-m", "pyanamo", *args], env={**os.environ, **env},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        then()
        rest, err = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return subprocess.CompletedProcess(process.args, process.returncode, first + rest, err)


@dataclass
class Workers:
    """Worker processes started by a test; all are killed at teardown."""

    env: dict[str, str]
    root: Path
    processes: list[subprocess.Popen] = field(default_factory=list)

    def start(self, table: str, *args: str, name: str | None = None,
              env: dict[str, str] | None = None, wrapper: tuple[str, ...] = ()) -> subprocess.Popen:
        name = name or f"w{len(self.processes)}"
        log = open(self.root / f"{name}.log", "wb")
        if "--outputs" not in args:  # never the default pyanamo-outputs/ in the test's folder
            args = ("--outputs", str(self.root / "outputs"), *args)
        process = subprocess.Popen(
            [*wrapper, sys.executable, "-m", "pyanamo", "worker", table,
             "--log-dir", str(self.root / "logs"), "--workdir", str(self.root), *args],
            env={**os.environ, **self.env, "WORKER_NAME": name, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        process.log_path = self.root / f"{name}.log"  # type: ignore[attr-defined]
        process.name = name  # type: ignore[attr-defined]
        self.processes.append(process)
        return process

    def wait_all(self, timeout: float = 120) -> list[int]:
        deadline = time.monotonic() + timeout
        codes = []
        for process in self.processes:
            codes.append(process.wait(timeout=max(0.1, deadline - time.monotonic())))
        return codes

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                kill_tree(process.pid)
                process.wait(timeout=10)


def supervisor_of(worker_pid: int) -> int:
    """The supervisor of the worker's one running sub-task (named ``pyanamo-sup``: forked by the
    worker's fork server, or a process of its own)."""
    for pid in descendants(worker_pid):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "pyanamo-sup":
                return pid
        except OSError:
            continue
    raise AssertionError("no supervisor running")


def descendants(pid: int) -> list[int]:
    """All live descendants of ``pid`` (from /proc), deepest last."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, frontier = [], [pid]
    while frontier:
        nxt = []
        for p in frontier:
            nxt.extend(children.get(p, []))
        found.extend(nxt)
        frontier = nxt
    return found


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def kill_tree(pid: int) -> None:
    """SIGKILL a worker and every process under it, as if its machine died.

    Everything is frozen first, so no process is reparented (and missed) while we kill. A process
    forked while /proc was being read is missed by one pass, so the freezing goes on until a pass
    finds nothing new (its parent is frozen by then, so it cannot fork again).
    """
    frozen: list[int] = []
    while new := [p for p in [pid, *descendants(pid)] if p not in frozen]:
        _signal_all(new, signal.SIGSTOP)
        _wait_stopped(new)  # SIGSTOP lands asynchronously: a process still running could fork unseen
        frozen += new
    _signal_all(frozen, signal.SIGKILL)


def _wait_stopped(pids: list[int], timeout: float = 5.0) -> None:
    """Until each process is stopped (or gone): only then can a /proc pass see all its children."""
    deadline = time.monotonic() + timeout
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                break  # gone
            if state in ("T", "t", "Z", "X"):
                break
            time.sleep(0.001)


def wait_for(predicate, timeout: float = 30, interval: float = 0.1, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {message}")
        time.sleep(interval)


def s3_client(aws_env: dict[str, str]):
    return boto3.client("s3", endpoint_url=aws_env["AWS_ENDPOINT_URL_S3"], region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


RECORDER = """#!/usr/bin/env bash
# record.sh SECONDS [EXIT]: log start and end of this sub-task run, sleep, exit.
log=${RECORD_FILE:?}
echo "start|$PYANAMO_ITEM_ID|$PYANAMO_SUBTASK|${WORKER_NAME:-?}|$$|$(date +%s.%N)" >> "$log"
sleep "$1"
echo "end|$PYANAMO_ITEM_ID|$PYANAMO_SUBTASK|${WORKER_NAME:-?}|$$|$(date +%s.%N)" >> "$log"
echo "ran by ${WORKER_NAME:-?}"
exit "${2:-0}"
"""


@dataclass(frozen=True)
class Run:
    item: str
    subtask: str
    worker: str
    start: float
    end: float | None


class Recorder:
    def __init__(self, root: Path) -> None:
        self.script = root / "record.sh"
        self.script.write_text(RECORDER)
        self.script.chmod(0o755)
        self.file = root / "runs.log"
        self.file.touch()

    def command(self, seconds: float, exit_code: int = 0) -> str:
        return f"{self.script} {seconds} {exit_code}"

    def runs(self) -> list[Run]:
        """Every run: a start and the end written by the same process (none if it was stopped)."""
        starts: dict[tuple[str, str, str, str], float] = {}
        ends: dict[tuple[str, str, str, str], float] = {}
        for line in self.file.read_text().splitlines():
            kind, item, subtask, worker, pid, stamp = line.split("|")
            (starts if kind == "start" else ends)[(item, subtask, worker, pid)] = float(stamp)
        return [Run(item, subtask, worker, start, ends.get((item, subtask, worker, pid)))
                for (item, subtask, worker, pid), start in starts.items()]

    def starts(self) -> dict[tuple[str, str], int]:
        counts: dict[tuple[str, str], int] = defaultdict(int)
        for run in self.runs():
            counts[(run.item, run.subtask)] += 1
        return dict(counts)


def iso_to_epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def max_overlap(runs: list[Run]) -> int:
    edges = sorted([(r.start, 1) for r in runs] + [(r.end or float("inf"), -1) for r in runs])
    level = peak = 0
    for _, step in edges:
        level += step
        peak = max(peak, level)
    return peak


class StubImds:
    """A stub EC2 instance metadata service (IMDSv2 only) on 127.0.0.1.

    Answers instance-id (and any ``metadata`` paths given), and spot/instance-action once
    ``interrupt()`` was called.
    """

    TOKEN = "stub-token"

    def __init__(self, instance_id: str, metadata: dict[str, str] | None = None) -> None:
        self.instance_id = instance_id
        self.spot_action: str | None = None
        self.metadata = {"instance-id": instance_id, **(metadata or {})}  # path under meta-data/ -> text
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_PUT(self) -> None:
                ok = self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
                self._reply(200 if ok else 400, stub.TOKEN if ok else "")

            def do_GET(self) -> None:
                if self.headers.get("X-aws-ec2-metadata-token") != stub.TOKEN:
                    self._reply(401, "")  # IMDSv2 only: no token, no answer
                elif self.path.removeprefix("/latest/meta-data/") in stub.metadata:
                    self._reply(200, stub.metadata[self.path.removeprefix("/latest/meta-data/")])
                elif self.path == "/latest/meta-data/spot/instance-action" and stub.spot_action:
                    self._reply(200, stub.spot_action)
                else:
                    self._reply(404, "")

            def _reply(self, code: int, body: str) -> None:
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def interrupt(self, action: str = "terminate") -> None:
        self.spot_action = f'{{"action": "{action}", "time": "2026-11-25T08:00:00Z"}}'

    def __enter__(self) -> StubImds:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- deploying the synthesized stack to moto's CloudFormation -------------------------------

ACCOUNT, REGION = "123456789012", "us-east-1"


def upload_assets(s3, assembly: Path, stack: str) -> None:
    manifest = json.loads((assembly / f"{stack}.assets.json").read_text())
    for asset in manifest["files"].values():
        source = assembly / asset["source"]["path"]
        if asset["source"].get("packaging") == "zip":
            buffer = io.BytesIO()
            with zipfile.ZipFile(buffer, "w") as archive:
                for file in sorted(source.rglob("*")):
                    if file.is_file():
                        archive.write(file, file.relative_to(source).as_posix())
            body = buffer.getvalue()
        else:
            body = source.read_bytes()
        for destination in asset["destinations"].values():
            bucket = destination["bucketName"].replace("${AWS::AccountId}", ACCOUNT).replace("${AWS::Region}", REGION)
            if bucket not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
                s3.create_bucket(Bucket=bucket)
            s3.put_object(Bucket=bucket, Key=destination["objectKey"], Body=body)


def wait_for_stack(cloudformation, name: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        stacks = cloudformation.describe_stacks(StackName=name)["Stacks"]
        if not stacks[0]["StackStatus"].endswith("IN_PROGRESS") or time.monotonic() > deadline:
            return stacks[0]
        time.sleep(0.5)


class InstantLauncher:
    """A ``pyanamo.launcher.Launcher`` that starts no process: a script ``exit N`` ends with
    status N, any other with 0, at once. For tests of the queue's logic through a real ``Worker``
    (claims, results, releases) where the sub-tasks' processes are not the subject. ``launched``
    lists (PYANAMO_ITEM_ID, PYANAMO_SUBTASK) in the order they started."""

    def __init__(self) -> None:
        self.launched: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def close(self) -> None:
        pass

    def launch(self, launch):
        with self._lock:
            self.launched.append((launch.env["PYANAMO_ITEM_ID"], launch.env["PYANAMO_SUBTASK"]))
        return _InstantRun(launch)


class _InstantRun:
    def __init__(self, launch) -> None:
        self.launch = launch

    def run(self):
        from pyanamo.runner import Outcome

        folder = self.launch.log_folder
        folder.mkdir(parents=True, exist_ok=True)
        for stream in ("stdout", "stderr"):
            (folder / stream).write_text("")
        words = self.launch.script.split()
        code = int(words[1]) if len(words) == 2 and words[0] == "exit" and words[1].isdigit() else 0
        return Outcome(code, False, 0.0, 0.0, folder / "stdout", folder / "stderr", started_at=time.time())

    def interrupt(self, reason: str = "stop", grace: float | None = None) -> None:
        pass

    def extend(self, seconds: float) -> None:
        pass
