"""`pyanamo local`: an embedded DynamoDB-compatible endpoint (moto's server) on 127.0.0.1.

Two of moto's ways differ from DynamoDB where PyAnamo relies on DynamoDB:
- moto's own server answers requests on several threads without a lock, so two conditional
  updates of one item can both succeed. This endpoint runs moto one request at a time.
- moto applies an UpdateItem that it then refuses as too large in part (the SET actions before
  the one that crossed the limit stay written). DynamoDB applies an update whole or not at all;
  this endpoint restores the item when moto refuses an update.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import re
import signal
import socket
import threading
from collections.abc import Callable, Iterable
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


class LocalEndpoint:
    """moto's DynamoDB (and other services) on 127.0.0.1, in a background thread."""

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

    def start(self) -> LocalEndpoint:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join()


def serve(port: int) -> None:
    """Serve until SIGINT or SIGTERM, after printing the line that points the CLI here."""
    endpoint = LocalEndpoint(port).start()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(f"export AWS_ENDPOINT_URL_DYNAMODB={endpoint.url}", flush=True)
    print(f"# local DynamoDB endpoint on {endpoint.url} (in-memory; stops with Ctrl-C)", flush=True)
    stop.wait()
    endpoint.stop()
