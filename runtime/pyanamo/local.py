"""`pyanamo local`: an embedded DynamoDB-compatible endpoint (moto's server) on 127.0.0.1.

moto's own server answers requests on several threads without a lock, so two conditional
updates of one item can both succeed; DynamoDB never allows that, and PyAnamo's claims rely on
it. This endpoint therefore runs moto's application one request at a time.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
from typing import Any, Callable, Iterable

from .errors import PyAnamoError

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _serialized(app: Callable[..., Iterable[bytes]]) -> Callable[..., list[bytes]]:
    """A WSGI app that runs ``app`` for one request at a time (atomic conditional writes)."""
    lock = threading.Lock()

    def serve_one(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        with lock:
            return list(app(environ, start_response))

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

    def start(self) -> "LocalEndpoint":
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
