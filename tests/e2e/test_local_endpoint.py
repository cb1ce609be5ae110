"""`pyanamo local` as users run it: dynalite on 127.0.0.1, persistent, one per folder, moto as the
fallback."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from helpers import cli, descendants, write_task_file


@contextmanager
def local(*args: str, env: dict[str, str] | None = None) -> Iterator[tuple[subprocess.Popen, str, str]]:
    """A running `pyanamo local ARGS`: the process, its URL and its description line."""
    server = subprocess.Popen([sys.executable, "-m", "pyanamo", "local", "--port", "0", *args],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, **(env or {})})
    try:
        export = server.stdout.readline().strip()
        assert export.startswith("export AWS_ENDPOINT_URL_DYNAMODB=http://127.0.0.1:"), server.stderr.read()
        yield server, export.split("=", 1)[1], server.stdout.readline().strip()
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGINT)
            server.wait(timeout=30)


def user_env(url: str) -> dict[str, str]:
    return {"AWS_ENDPOINT_URL_DYNAMODB": url}  # no credentials, no region: local defaults


def import_one(url: str, table: str, tmp_path: Path, env: dict[str, str] | None = None) -> None:
    assert cli("create-table", table, env={**user_env(url), **(env or {})}).returncode == 0
    tasks = write_task_file(tmp_path / f"{table}.txt", ["a|S|echo a", "b|S|echo b"])
    assert cli("import", table, str(tasks), env={**user_env(url), **(env or {})}).returncode == 0


def total_items(url: str, table: str, env: dict[str, str] | None = None) -> int:
    proc = cli("status", table, "--json", env={**user_env(url), **(env or {})})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["total_items"]


def test_tables_survive_a_restart_and_a_killed_endpoint(tmp_path: Path):
    data = tmp_path / "data"
    with local("--path", str(data)) as (_, url, detail):
        assert f"(dynalite, data in {data})" in detail
        import_one(url, "kept", tmp_path)
    with local("--path", str(data)) as (server, url, _):
        assert total_items(url, "kept") == 2
        cli("import", "kept", str(write_task_file(tmp_path / "c.txt", ["c|S|echo c"])), env=user_env(url))
        server.kill()  # SIGKILL: its dynalite child goes too (parent-death signal); acknowledged writes stay
        server.wait(timeout=10)
    with local("--path", str(data)) as (_, url, _):
        assert total_items(url, "kept") == 3


def test_in_memory_keeps_nothing_and_the_default_folder_is_documented(tmp_path: Path):
    with local("--in-memory") as (_, url, detail):
        assert "(dynalite, in memory)" in detail
        import_one(url, "gone", tmp_path)
    with local("--in-memory") as (_, url, _):
        proc = cli("status", "gone", "--json", env=user_env(url))
        assert proc.returncode == 1 and "table 'gone' does not exist" in proc.stderr
    with local(env={"XDG_DATA_HOME": str(tmp_path / "xdg")}) as (_, _, detail):
        assert f"data in {tmp_path / 'xdg' / 'pyanamo' / 'local'}" in detail


def test_a_second_endpoint_on_the_same_folder_is_refused_with_one_line(tmp_path: Path):
    with local("--path", str(tmp_path)) as (server, _, _):
        second = subprocess.run([sys.executable, "-m", "pyanamo", "local", "--port", "0", "--path", str(tmp_path)],
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 1 and second.stdout == ""
        assert second.stderr == (f"pyanamo: error: another pyanamo local (pid {server.pid}) is serving {tmp_path}; "
                                 f"stop it, or pass another --path (or --in-memory)\n")


def test_stopping_it_stops_its_dynalite_process(tmp_path: Path):
    with local("--in-memory") as (server, url, _):
        children = descendants(server.pid)
        assert children, "dynalite runs as a child process"
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0
    alive = [pid for pid in children if Path(f"/proc/{pid}").exists()]
    assert alive == []


def machine_address() -> str | None:
    """An IPv4 address of this machine other than loopback (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))
            address = probe.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_it_listens_on_loopback_only(tmp_path: Path):
    """dynalite checks no credentials and whoever writes items runs commands on the workers: the
    port must not be reachable from the machine's other addresses."""
    address = machine_address()
    if address is None:
        pytest.skip("this machine has no IPv4 address besides loopback to try the port on")
    with local("--in-memory") as (_, url, _):
        port = int(url.rsplit(":", 1)[1])
        with socket.socket() as outside:
            outside.settimeout(5)
            assert outside.connect_ex((address, port)) != 0, f"port {port} answers on {address}"
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass


def test_without_node_it_falls_back_to_moto_with_a_notice(tmp_path: Path):
    with local("--path", str(tmp_path), env={"PATH": str(tmp_path / "empty")}) as (server, url, detail):
        assert "(moto, in memory)" in detail
        table = f"m-{uuid.uuid4().hex[:6]}"
        import_one(url, table, tmp_path)
        assert total_items(url, table) == 2
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)
        assert server.stderr.read() == (
            "pyanamo local: Node.js is not on PATH; serving moto instead (in memory: tables are lost when it "
            "stops)\n")


def test_create_table_refuses_names_dynamodb_would_refuse(tmp_path: Path):
    env = {"AWS_ENDPOINT_URL_DYNAMODB": "http://127.0.0.1:9"}  # refused before any request
    for name, reason in [("t", "has 1 characters; DynamoDB needs 3 to 255"),
                         ("my table!", "has ' !'; DynamoDB allows only letters, digits, '_', '-' and '.'"),
                         ("x" * 256, "has 256 characters")]:
        proc = cli("create-table", name, env=env)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and reason in proc.stderr, proc.stderr


@pytest.mark.parametrize("engine", ["dynalite", "moto"])
def test_a_port_in_use_is_refused_with_one_line_and_no_export(tmp_path: Path, engine: str):
    """Whatever holds the port (another endpoint, a DynamoDB Local in Docker) answers HTTP: taking
    its answer for the new endpoint's would send the user's commands to it."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "pyanamo", "local", "--port", str(port), "--engine", engine,
                               "--in-memory"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr == (f"pyanamo: error: cannot listen on 127.0.0.1:{port}: address already in use; stop what "
                           f"holds port {port}, or pass another --port (--port 0 picks a free one)\n")


def dynalite_pid(server: subprocess.Popen) -> int:
    (pid,) = descendants(server.pid)
    return pid


def test_an_in_memory_endpoint_whose_dynalite_dies_says_so_and_exits_1(tmp_path: Path):
    with local("--in-memory") as (server, _, _):
        os.kill(dynalite_pid(server), signal.SIGKILL)
        assert server.wait(timeout=30) == 1
        assert server.stderr.read() == ("pyanamo local: dynalite stopped on its own (exit -9); its in-memory tables "
                                        "are lost\n")


def test_a_persistent_endpoint_whose_dynalite_dies_is_started_again_with_its_tables(tmp_path: Path):
    with local("--path", str(tmp_path / "data")) as (server, url, _):
        import_one(url, "kept", tmp_path)
        first = dynalite_pid(server)
        os.kill(first, signal.SIGKILL)
        notice = server.stderr.readline()
        assert notice == "pyanamo local: dynalite stopped on its own (exit -9); starting it again (1 of 3)\n"
        assert server.stderr.readline() == f"pyanamo local: serving again on {url}\n"
        assert total_items(url, "kept") == 2
        assert dynalite_pid(server) != first and server.poll() is None


def test_its_data_folder_is_the_operators_alone(tmp_path: Path):
    """The queue's items are commands the operator's workers run: no other user may read or write them."""
    with local("--path", str(tmp_path / "new")):
        assert (tmp_path / "new").stat().st_mode & 0o777 == 0o700
        assert (tmp_path / "new" / "data").stat().st_mode & 0o777 == 0o700
        assert (tmp_path / "new" / "pyanamo-local.lock").stat().st_mode & 0o777 == 0o600


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB file system (tmpfs), where this machine lets the test mount one."""
    folder = tmp_path / "tiny"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small file system here: {mounted.stderr.decode().strip()}")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_full_disk_stops_it_with_one_line_and_exit_1(tmp_path: Path, tiny_disk: Path):
    rows = [f"i{n}|S|echo {os.urandom(300).hex()}" for n in range(3000)]  # about 2 MB: more than the disk holds
    with local("--path", str(tiny_disk / "queue")) as (server, url, _):
        assert cli("create-table", "big", env=user_env(url)).returncode == 0
        cli("import", "big", str(write_task_file(tmp_path / "big.txt", rows)), env=user_env(url))
        assert server.wait(timeout=60) == 1
        assert server.stderr.read() == (f"pyanamo local: dynalite stopped: the disk holding {tiny_disk / 'queue'} is "
                                        f"full (exit 70); free some space and start it again\n")


OTHER_USER = r"""
import json, os, sys, urllib.error, urllib.request
url, secret, data = sys.argv[1:4]
found = {}
for name, auth in (("unsigned", None), ("signed with another key",
        "AWS4-HMAC-SHA256 Credential=me/20261203/us-east-1/dynamodb/aws4_request, "
        "SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature=" + "ab" * 32)):
    headers = {"X-Amz-Target": "DynamoDB_20120810.Scan", "Content-Type": "application/x-amz-json-1.0",
               "X-Amz-Date": "20261203T000000Z"}
    if auth:
        headers["Authorization"] = auth
    request = urllib.request.Request(url, data=json.dumps({"TableName": "private"}).encode(), headers=headers)
    try:
        found[name] = urllib.request.urlopen(request, timeout=10).status
    except urllib.error.HTTPError as exc:
        found[name] = exc.code
for name, path in (("secret", secret), ("data", data)):
    try:
        os.listdir(path) if name == "data" else open(path).read()
        found[name] = "read"
    except PermissionError:
        found[name] = "denied"
print(json.dumps(found))
"""


def test_another_user_can_neither_use_nor_read_the_endpoint(tmp_path: Path):
    """Run as `nobody` with the standard library only, as another user of the machine would."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run a process as another user (nobody)")
    tmp_path.chmod(0o755)  # the other user may walk to the folder; the folder itself must stop them
    secret_file = tmp_path / "config" / "local-secret"
    env = {"PYANAMO_LOCAL_SECRET_FILE": str(secret_file)}
    with local("--path", str(tmp_path / "data"), env=env) as (_, url, detail):
        assert f"your requests only ({secret_file})" in detail
        (tmp_path / "config").chmod(0o755)  # even where its folder is open, the file is not
        assert secret_file.stat().st_mode & 0o777 == 0o600
        import_one(url, "private", tmp_path, env=env)
        other = subprocess.run(["/usr/bin/python3", "-I", "-c", OTHER_USER, url, str(secret_file),
                                str(tmp_path / "data")], capture_output=True, text=True, timeout=60,
                               user=65534, group=65534, env={"PATH": "/usr/bin:/bin"})
        assert other.returncode == 0, other.stderr
        assert json.loads(other.stdout) == {"unsigned": 400, "signed with another key": 400,
                                            "secret": "denied", "data": "denied"}
        assert total_items(url, "private", env=env) == 2  # the operator is served


class _Impostor(BaseHTTPRequestHandler):
    """What another user could put on the port while the endpoint is down: any answer, no proof."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = json.dumps({"Table": {"TableStatus": "ACTIVE", "TableName": "private"}, "Items": [],
                           "Count": 0, "ScannedCount": 0}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-amz-json-1.0")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_the_operators_commands_refuse_an_endpoint_that_cannot_prove_it_is_theirs(tmp_path: Path):
    secret_file = tmp_path / "local-secret"
    secret_file.write_text("the operator's secret\n")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Impostor)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        env = {**user_env(url), "PYANAMO_LOCAL_SECRET_FILE": str(secret_file)}
        for command in (["status", "private"], ["worker", "private", "--linger", "0"]):
            proc = cli(*command, env=env)
            assert proc.returncode == 1, (command, proc.stderr)
            assert proc.stderr.endswith(f"the endpoint {url} cannot prove it is your pyanamo local (another program, "
                                        f"perhaps another user's, holds its port): refusing it\n"), proc.stderr
            assert "Traceback" not in proc.stderr
    finally:
        server.shutdown()
