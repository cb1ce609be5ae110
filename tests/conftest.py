"""Shared fixtures: a real moto server over HTTP, fresh tables, and worker processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import boto3
import pytest

from pyanamo.aws import Endpoint, dynamodb_client
from pyanamo.local import free_port
from pyanamo.model import Item
from pyanamo.queue import TaskQueue
from pyanamo.schema import create_table_request

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    """A moto server in its own process on 127.0.0.1 and a free port."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{url}/moto-api/", timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError("moto server did not start")
            time.sleep(0.1)
    yield url
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture(scope="session")
def aws_env(moto_url: str) -> dict[str, str]:
    """The environment for CLI and worker processes pointed at the moto server."""
    return {
        "AWS_ENDPOINT_URL_DYNAMODB": moto_url,
        "AWS_ENDPOINT_URL_S3": moto_url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    """Keep every test away from real AWS: no profile, no metadata service."""
    for name in list(os.environ):
        if name.startswith("AWS_") or name.startswith("PYANAMO_"):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    if "aws_env" in request.fixturenames:
        for name, value in request.getfixturevalue("aws_env").items():
            monkeypatch.setenv(name, value)


@pytest.fixture
def client(aws_env: dict[str, str]):
    return dynamodb_client(Endpoint())


@pytest.fixture
def table(client) -> str:
    name = f"t-{uuid.uuid4().hex[:12]}"
    client.create_table(**create_table_request(name))
    return name


@pytest.fixture
def queue(client, table: str) -> TaskQueue:
    return TaskQueue(client, table, owner="test-owner", lease_seconds=30)


def put_items(client, table: str, items: list[Item]) -> None:
    for item in items:
        client.put_item(TableName=table, Item=item.new_row())


def write_task_file(path: Path, rows: list[str], header: str = "itemID|taskID|TaskScript") -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def cli(*args: str, env: dict[str, str], cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run the real `pyanamo` command in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "pyanamo", *args],
        env={**os.environ, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@dataclass
class Workers:
    """Worker processes started by a test; all are killed at teardown."""

    env: dict[str, str]
    root: Path
    processes: list[subprocess.Popen] = field(default_factory=list)

    def start(self, table: str, *args: str, name: str | None = None) -> subprocess.Popen:
        name = name or f"w{len(self.processes)}"
        log = open(self.root / f"{name}.log", "wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "pyanamo", "worker", table,
             "--log-dir", str(self.root / "logs"), "--workdir", str(self.root), *args],
            env={**os.environ, **self.env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        process.log_path = self.root / f"{name}.log"  # type: ignore[attr-defined]
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


@pytest.fixture
def workers(aws_env: dict[str, str], tmp_path: Path) -> Iterator[Workers]:
    pool = Workers(aws_env, tmp_path)
    yield pool
    pool.stop_all()


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


def kill_tree(pid: int) -> None:
    """SIGKILL a worker and every process under it, as if its machine died.

    Everything is frozen first, so no process is reparented (and missed) while we kill.
    """
    tree = [pid, *descendants(pid)]
    for p in tree:
        try:
            os.kill(p, signal.SIGSTOP)
        except ProcessLookupError:
            pass
    tree = [pid, *descendants(pid)]
    for p in tree:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


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
