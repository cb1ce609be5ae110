"""`pyanamo local`: an embedded DynamoDB-compatible endpoint on 127.0.0.1, for runs without AWS.

Two engines:
- **dynalite** (default; Node.js, LevelDB): answers index queries in time independent of the
  table's size, locks per key (conditional writes are atomic), and keeps its data in a folder
  across restarts. It listens on every interface unless told otherwise and checks no
  credentials, so it is started on 127.0.0.1 only (whoever can write items can run commands on
  the workers). Table creation delays are turned off. It runs through ``dynalite_server.js``,
  which keeps it serving when a client goes away mid-request (dynalite itself exits then) and
  says which port it listens on, so another program's answer on the port is never taken for its.
  If it stops anyway, ``pyanamo local`` says why in one line and exits 1, or, with a data folder,
  starts it again (at most ``MAX_RESTARTS`` times; never on a full disk).
- **moto** (``--engine moto``, and the fallback when Node.js or dynalite is missing): in memory.
  Two of its ways differ from DynamoDB where PyAnamo relies on DynamoDB: its own server answers
  requests on several threads without a lock, so two conditional updates of one item can both
  succeed (this endpoint runs moto one request at a time); and it applies in part an UpdateItem
  that it then refuses as too large (this endpoint restores the item).
"""

from __future__ import annotations

import collections
import copy
import errno
import fcntl
import io
import json
import logging
import os
import re
import select
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
from .local_secret import PROOF_HEADER, bad_signature, ensure_secret, proof, secret_path, signature_of
from .supervise import PR_SET_PDEATHSIG, prctl

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def port_in_use(port: int) -> str:
    return (f"cannot listen on {HOST}:{port}: address already in use; stop what holds port {port}, "
            f"or pass another --port (--port 0 picks a free one)")


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


def _headers(environ: dict[str, Any]) -> dict[str, str]:
    """A WSGI request's headers by lower-case name."""
    found = {key[5:].replace("_", "-").lower(): value for key, value in environ.items() if key.startswith("HTTP_")}
    for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        if environ.get(key):
            found[key.replace("_", "-").lower()] = environ[key]
    return found


def _serialized(app: Callable[..., Iterable[bytes]], secret: str) -> Callable[..., list[bytes]]:
    """A WSGI app that runs ``app`` for one request at a time (atomic conditional writes), and
    undoes what moto wrote of an update it refused. DynamoDB requests must be signed with the
    operator's ``secret``, and their answers carry its proof (``local_secret``)."""
    lock = threading.Lock()

    def serve_one(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        environ["wsgi.input"] = io.BytesIO(body)
        status: list[str] = []
        headers = _headers(environ)
        extra: list[tuple[str, str]] = []
        if secret and headers.get("x-amz-target", "").startswith("DynamoDB_"):
            why = bad_signature(secret, environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", "/") or "/",
                                environ.get("QUERY_STRING", ""), headers, body)
            if why is not None:
                refusal = json.dumps({"__type": "com.amazon.coral.service#InvalidSignatureException",
                                      "message": why}).encode()
                start_response("400 Bad Request", [("Content-Type", "application/x-amz-json-1.0"),
                                                   ("Content-Length", str(len(refusal)))])
                return [refusal]
            extra.append((PROOF_HEADER, proof(secret, signature_of(headers["authorization"]))))

        def remember(code: str, headers: Any, *rest: Any) -> Any:
            status.append(code)
            return start_response(code, [*headers, *extra], *rest)

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

    def __init__(self, port: int = 0, open_to_all: bool = False) -> None:
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
        app = _serialized(DomainDispatcherApplication(create_backend_app), "" if open_to_all else ensure_secret())
        listener = socket.socket()  # bound here: werkzeug would print its own message and exit
        try:
            listener.bind((HOST, port))
            listener.listen(128)
        except OSError as exc:
            listener.close()
            if exc.errno == errno.EADDRINUSE:
                raise PyAnamoError(port_in_use(port)) from None
            raise PyAnamoError(f"cannot listen on {HOST}:{port}: {exc.strerror}") from None
        self._server = make_server(HOST, port, app, threaded=True, request_handler=MotoRequestHandler,
                                   fd=listener.fileno())
        listener.close()  # the server holds its own descriptor of the socket
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
    """``(node, dynalite's package folder)``, or why dynalite cannot be used here (one line)."""
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
            return node, Path(candidate).parent
    return "dynalite is not installed (npm ci in the project folder installs it)"


class DataDirLock:
    """One ``pyanamo local`` per data folder: an exclusive lock on a file in it, held while
    serving (released by the kernel if the process dies)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._file: Any = None

    def acquire(self) -> None:
        try:
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            handle = os.fdopen(os.open(self.folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600), "r+")
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
    """In the child before exec: get SIGTERM when the parent dies, even by SIGKILL (Linux;
    elsewhere the child outlives a killed parent, and stop() still ends it)."""
    prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


SERVER_SCRIPT = Path(__file__).with_name("dynalite_server.js")
STDERR_LINES = 20  # the last lines of dynalite's stderr, kept for the message when it stops
MAX_RESTARTS = 3  # a persistent endpoint that stops on its own is started again at most this often


class DynaliteEndpoint:
    """dynalite in a child process on 127.0.0.1 (through ``dynalite_server.js``, which keeps it up
    when a client goes away mid-request); persistent in ``path`` unless it is None."""

    engine = "dynalite"

    def __init__(self, node: str, package: Path, port: int = 0, path: Path | None = None,
                 open_to_all: bool = False) -> None:
        self.port = port
        self.path = path
        self.url = ""
        self.detail = f"data in {path}" if path else "in memory"
        self._node = node
        self._package = package
        self._lock = DataDirLock(path) if path is not None else None
        self._process: subprocess.Popen[str] | None = None
        self._stderr: collections.deque[str] = collections.deque(maxlen=STDERR_LINES)
        self._secret = "" if open_to_all else ensure_secret()

    def start(self) -> DynaliteEndpoint:
        if self._lock is not None:
            self._lock.acquire()
        try:
            self._spawn()
        except BaseException:
            self.stop()
            raise
        return self

    def restart(self) -> None:
        """Start dynalite again on the same port after it stopped on its own."""
        self._spawn()

    def _spawn(self) -> None:
        command = [self._node, str(SERVER_SCRIPT), str(self._package), HOST, str(self.port)]
        if self.path is not None:
            data = self.path / "data"
            data.mkdir(mode=0o700, exist_ok=True)
            data.chmod(0o700)  # the queue's items hold the commands the workers run: the operator's alone
            command.append(str(data))
        self._stderr.clear()
        self._process = subprocess.Popen(  # nosec B603: node and dynalite found above, fixed args
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYANAMO_LOCAL_SECRET": self._secret},  # never in argv: others can read that
            preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        threading.Thread(target=self._keep_stderr, args=(self._process,), daemon=True).start()
        self._wait_ready(self._process)

    def _keep_stderr(self, process: subprocess.Popen[str]) -> None:
        assert process.stderr is not None
        for line in process.stderr:
            if line.strip():
                self._stderr.append(line.rstrip())

    def _wait_ready(self, process: subprocess.Popen[str]) -> None:
        """Until dynalite says it listens, then answers a request (its store is open then); or
        its early exit, said in one line."""
        assert process.stdout is not None
        deadline = time.monotonic() + READY_TIMEOUT
        ready, _, _ = select.select([process.stdout], [], [], READY_TIMEOUT)
        line = process.stdout.readline() if ready else ""
        if not line.startswith("listening "):
            if process.poll() is None:
                process.kill()
            process.wait()
            time.sleep(0.1)  # the stderr reader's last lines
            raise PyAnamoError(self.why_stopped(process.returncode, starting=True))
        self.port = int(line.split()[1])
        self.url = f"http://{HOST}:{self.port}"
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise PyAnamoError(self.why_stopped(process.returncode, starting=True))
            if _answers(self.url):
                return
            time.sleep(0.05)
        raise PyAnamoError(f"dynalite did not answer on {self.url} within {READY_TIMEOUT:.0f} s")

    def why_stopped(self, status: int | None, starting: bool = False) -> str:
        """One line: why dynalite stopped, from its last stderr lines."""
        lines = list(self._stderr)
        last = next((line for line in reversed(lines) if line.startswith(("cannot listen", "dynalite failed"))),
                    lines[-1] if lines else "")
        if "address already in use" in last:
            return port_in_use(self.port)
        if self.disk_full():
            where = f" holding {self.path}" if self.path else ""
            return f"dynalite stopped: the disk{where} is full (exit {status}); free some space and start it again"
        when = "at start" if starting else "on its own"
        return f"dynalite stopped {when} (exit {status}){': ' + last[:300] if last else ''}"

    def disk_full(self) -> bool:
        return any("ENOSPC" in line or "No space left on device" in line for line in self._stderr)

    def exited(self) -> int | None:
        """dynalite's exit status if it stopped, else None."""
        return None if self._process is None else self._process.poll()

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


def open_endpoint(engine: str, port: int, path: Path | None, notice: Callable[[str], None],
                  open_to_all: bool = False) -> Endpoint:
    """The endpoint ``engine`` names, started; dynalite falls back to moto with a notice.
    ``open_to_all``: serve requests signed with any key (no secret, no proof)."""
    if engine == "dynalite":
        found = find_dynalite()
        if isinstance(found, tuple):
            return DynaliteEndpoint(*found, port=port, path=path, open_to_all=open_to_all).start()
        notice(f"{found}; serving moto instead (in memory: tables are lost when it stops)")
    return MotoEndpoint(port, open_to_all).start()


def serve(engine: str, port: int, path: Path | None, open_to_all: bool = False) -> int:
    """Serve until SIGINT or SIGTERM (exit 0), after printing the line that points the CLI here.
    If dynalite stops on its own, say why in one line; a persistent one is started again (at most
    MAX_RESTARTS times), an in-memory one is not (its tables are gone): exit 1."""
    def notice(line: str) -> None:
        print(f"pyanamo local: {line}", file=sys.stderr, flush=True)

    endpoint = open_endpoint(engine, port, path, notice, open_to_all)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(f"export AWS_ENDPOINT_URL_DYNAMODB={endpoint.url}", flush=True)
    access = "open to every user of this machine" if open_to_all else f"your requests only ({secret_path()})"
    print(f"# local DynamoDB endpoint ({endpoint.engine}, {endpoint.detail}) on {endpoint.url}, {access}; "
          f"stops with Ctrl-C", flush=True)
    restarts = 0
    while not stop.wait(0.5):
        if not isinstance(endpoint, DynaliteEndpoint) or (status := endpoint.exited()) is None:
            continue
        time.sleep(0.1)  # the stderr reader's last lines
        reason = endpoint.why_stopped(status)
        if endpoint.disk_full():
            notice(reason)
            endpoint.stop()
            return 1
        if endpoint.path is None or restarts == MAX_RESTARTS:
            lost = "; its in-memory tables are lost" if endpoint.path is None else \
                f"; gave up after {MAX_RESTARTS} restarts"
            notice(reason + lost)
            endpoint.stop()
            return 1
        restarts += 1
        notice(f"{reason}; starting it again ({restarts} of {MAX_RESTARTS})")
        try:
            endpoint.restart()
        except PyAnamoError as exc:
            notice(str(exc))
            endpoint.stop()
            return 1
        notice(f"serving again on {endpoint.url}")
    endpoint.stop()
    return 0
