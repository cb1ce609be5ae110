"""`pyanamo local`: an embedded DynamoDB-compatible endpoint on 127.0.0.1, for runs without AWS.

Two engines:
- **dynalite** (default; Node.js, LevelDB): answers index queries in time independent of the
  table's size, locks per key (conditional writes are atomic), and keeps its data in a folder
  across restarts. It listens on every interface unless told otherwise and checks no
  credentials, so it is started on 127.0.0.1 only (whoever can write items can run commands on
  the workers). Table creation delays are turned off.
- **moto** (``--engine moto``, and the fallback when Node.js or dynalite is missing): in memory.
  Two of its ways differ from DynamoDB where PyAnamo relies on DynamoDB: its own server answers
  requests on several threads without a lock, so two conditional updates of one item can both
  succeed (this endpoint runs moto one request at a time); and it applies in part an UpdateItem
  that it then refuses as too large (this endpoint restores the item).
"""

from __future__ import annotations

import copy
import ctypes
import fcntl
import io
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .errors import PyAnamoError

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


_REGION = re.compile(r"Credential=[^/]+/[^/]+/([^/]+)/dynamodb/")


class _UpdateRollback:
    """The item an UpdateItem request targets, kept so that a refused update can be undone."""

    def __init__(self, environ: dict[str, Any], body: bytes) -> None:
        self.table: Any = None
        self.key: Any = None
        self.saved: Any = None
        if not environ.get("HTTP_X_AMZ_TARGET", "").endswith(".UpdateItem"):
            return
        try:
            from moto.core import DEFAULT_ACCOUNT_ID
            from moto.dynamodb.models import dynamodb_backends
            from moto.dynamodb.models.dynamo_type import DynamoType

            request = json.loads(body)
            region = _REGION.search(environ.get("HTTP_AUTHORIZATION", ""))
            backend = dynamodb_backends[DEFAULT_ACCOUNT_ID][region.group(1) if region else "us-east-1"]
            self.table = backend.tables.get(request["TableName"])
            if self.table is None or self.table.has_range_key:
                self.table = None
                return
            self.key = DynamoType(request["Key"][self.table.hash_key_attr])
            self.saved = copy.deepcopy(self.table.items.get(self.key))
        except (ValueError, KeyError, TypeError, ImportError, AttributeError):
            self.table = None

    def undo_if_refused(self, status: str, chunks: list[bytes]) -> None:
        if self.table is None or not status.startswith("400") or b"ValidationException" not in b"".join(chunks):
            return
        if self.saved is None:
            self.table.items.pop(self.key, None)
        else:
            self.table.items[self.key] = self.saved


def _serialized(app: Callable[..., Iterable[bytes]]) -> Callable[..., list[bytes]]:
    """A WSGI app that runs ``app`` for one request at a time (atomic conditional writes), and
    undoes what moto wrote of an update it refused."""
    lock = threading.Lock()

    def serve_one(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        environ["wsgi.input"] = io.BytesIO(body)
        status: list[str] = []

        def remember(code: str, headers: Any, *rest: Any) -> Any:
            status.append(code)
            return start_response(code, headers, *rest)

        with lock:
            rollback = _UpdateRollback(environ, body)
            chunks = list(app(environ, remember))
            rollback.undo_if_refused(status[0] if status else "", chunks)
            return chunks

    return serve_one


class MotoEndpoint:
    """moto's DynamoDB (and other services) on 127.0.0.1, in a background thread."""

    engine = "moto"
    detail = "in memory"

    def __init__(self, port: int = 0) -> None:
        try:
            from moto.moto_server.werkzeug_app import (
                DomainDispatcherApplication,
                MotoRequestHandler,
                create_backend_app,
            )
            from werkzeug.serving import make_server
        except ImportError:
            raise PyAnamoError(
                "the local endpoint needs moto: pip install 'pyanamo[local]' (requirements.txt has it)"
            ) from None
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
        app = _serialized(DomainDispatcherApplication(create_backend_app))
        try:
            self._server = make_server(HOST, port, app, threaded=True, request_handler=MotoRequestHandler)
        except OSError as exc:
            raise PyAnamoError(f"cannot listen on {HOST}:{port}: {exc.strerror}") from None
        self.url = f"http://{HOST}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> MotoEndpoint:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join()


MIN_NODE_MAJOR = 20  # dynalite 4 needs Node.js 20 or later
DYNALITE_VARIABLE = "PYANAMO_DYNALITE"  # the path of dynalite's cli.js, where it is elsewhere
LOCK_NAME = "pyanamo-local.lock"
READY_TIMEOUT = 30.0


def default_data_dir() -> Path:
    """Where ``pyanamo local`` keeps its tables unless told otherwise (XDG's data folder)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "pyanamo" / "local"


def find_dynalite() -> tuple[str, Path] | str:
    """``(node, cli.js)``, or why dynalite cannot be used here (one line)."""
    node = shutil.which("node")
    if node is None:
        return "Node.js is not on PATH"
    try:
        version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=10,
                                 check=False).stdout.strip()  # nosec B603: node from PATH, fixed args
        major = int(version.lstrip("v").split(".")[0])
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return "cannot tell the version of Node.js"
    if major < MIN_NODE_MAJOR:
        return f"dynalite needs Node.js {MIN_NODE_MAJOR} or later (found {version})"
    candidates = [os.environ.get(DYNALITE_VARIABLE, "")]
    candidates += [str(root / "node_modules" / "dynalite" / "cli.js")
                   for root in (Path(__file__).resolve().parents[2], Path.cwd())]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return node, Path(candidate)
    return "dynalite is not installed (npm ci in the project folder installs it)"


class DataDirLock:
    """One ``pyanamo local`` per data folder: an exclusive lock on a file in it, held while
    serving (released by the kernel if the process dies)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._file: Any = None

    def acquire(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            handle = open(self.folder / LOCK_NAME, "a+")  # held until release()
        except OSError as exc:
            raise PyAnamoError(f"--path {self.folder}: cannot use it: {exc.strerror}") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise PyAnamoError(
                f"another pyanamo local ({holder}) is serving {self.folder}; stop it, or pass another --path "
                f"(or --in-memory)") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the parent dies, even by SIGKILL (Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # elsewhere: the child outlives a killed parent; stop() still ends it


class DynaliteEndpoint:
    """dynalite in a child process on 127.0.0.1; persistent in ``path`` unless it is None."""

    engine = "dynalite"

    def __init__(self, node: str, cli: Path, port: int = 0, path: Path | None = None) -> None:
        self.port = port or free_port()
        self.path = path
        self.url = f"http://{HOST}:{self.port}"
        self.detail = f"data in {path}" if path else "in memory"
        self._command = [node, str(cli), "--host", HOST, "--port", str(self.port),
                         "--createTableMs", "0", "--deleteTableMs", "0", "--updateTableMs", "0"]
        if path is not None:
            self._command += ["--path", str(path / "data")]
        self._lock = DataDirLock(path) if path is not None else None
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> DynaliteEndpoint:
        if self._lock is not None:
            self._lock.acquire()
        try:
            self._process = subprocess.Popen(  # nosec B603: node and dynalite found above, fixed args
                self._command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None)
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        """Until dynalite answers a request (its store is opened then), or its early exit."""
        assert self._process is not None
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                error = (self._process.stderr.read() if self._process.stderr else b"").decode(errors="replace")
                last = next((line for line in reversed(error.splitlines()) if line.strip()), "")
                if "EADDRINUSE" in error:
                    raise PyAnamoError(f"cannot listen on {HOST}:{self.port}: address already in use")
                raise PyAnamoError(f"dynalite stopped at start (exit {self._process.returncode}): {last[:200]}")
            if _answers(self.url):
                return
            time.sleep(0.05)
        raise PyAnamoError(f"dynalite did not answer on {self.url} within {READY_TIMEOUT:.0f} s")

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._lock is not None:
            self._lock.release()

    def wait(self) -> int | None:
        """Until the child exits on its own (it should not); its exit status."""
        return None if self._process is None else self._process.wait()


def _answers(url: str) -> bool:
    """Whether a DynamoDB endpoint answers at ``url`` (any HTTP reply counts)."""
    request = urllib.request.Request(url, data=b"{}", method="POST", headers={
        "X-Amz-Target": "DynamoDB_20120810.ListTables", "Content-Type": "application/x-amz-json-1.0"})
    try:
        with urllib.request.urlopen(request, timeout=2):  # nosec B310: http to 127.0.0.1 only
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False


Endpoint = MotoEndpoint | DynaliteEndpoint


def open_endpoint(engine: str, port: int, path: Path | None, notice: Callable[[str], None]) -> Endpoint:
    """The endpoint ``engine`` names, started; dynalite falls back to moto with a notice."""
    if engine == "dynalite":
        found = find_dynalite()
        if isinstance(found, tuple):
            return DynaliteEndpoint(*found, port=port, path=path).start()
        notice(f"pyanamo local: {found}; serving moto instead (in memory: tables are lost when it stops)")
    return MotoEndpoint(port).start()


def serve(engine: str, port: int, path: Path | None) -> None:
    """Serve until SIGINT or SIGTERM, after printing the line that points the CLI here."""
    endpoint = open_endpoint(engine, port, path, lambda line: print(line, file=sys.stderr, flush=True))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(f"export AWS_ENDPOINT_URL_DYNAMODB={endpoint.url}", flush=True)
    print(f"# local DynamoDB endpoint ({endpoint.engine}, {endpoint.detail}) on {endpoint.url}; "
          f"stops with Ctrl-C", flush=True)
    if isinstance(endpoint, DynaliteEndpoint):  # a child that dies on its own ends the service too
        def watch(child: DynaliteEndpoint) -> None:
            child.wait()
            stop.set()

        threading.Thread(target=watch, args=(endpoint,), daemon=True).start()
    stop.wait()
    endpoint.stop()
