"""`pyanamo local`: an embedded DynamoDB-compatible endpoint (moto's server) on 127.0.0.1."""

from __future__ import annotations

import logging
import signal
import socket
import threading

from .aws import PyAnamoError

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def serve(port: int, ready: threading.Event | None = None) -> None:
    """Serve until SIGINT or SIGTERM."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        raise PyAnamoError(
            "the local endpoint needs moto: pip install 'pyanamo[local]' (requirements.txt has it)"
        ) from None
    port = port or free_port()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    server = ThreadedMotoServer(ip_address=HOST, port=port, verbose=False)
    try:
        server.start()
    except OSError as exc:
        raise PyAnamoError(f"cannot listen on {HOST}:{port}: {exc.strerror}") from None
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(f"export AWS_ENDPOINT_URL_DYNAMODB=http://{HOST}:{port}", flush=True)
    print(f"# local DynamoDB endpoint on {HOST}:{port} (in-memory; stops with Ctrl-C)", flush=True)
    if ready:
        ready.set()
    stop.wait()
    server.stop()
