"""Worker identity from a real (stub) IMDSv2 server on 127.0.0.1."""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import pytest

from pyanamo.identity import Imds, worker_identity


class _Imds(BaseHTTPRequestHandler):
    token = "tok-123"

    def log_message(self, *args) -> None:
        pass

    def do_PUT(self) -> None:
        if self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
            self._reply(200, self.token)
        else:
            self._reply(400, "")

    def do_GET(self) -> None:
        if self.headers.get("X-aws-ec2-metadata-token") != self.token:
            self._reply(401, "")  # IMDSv2 only: no token, no answer
        elif self.path == "/latest/meta-data/instance-id":
            self._reply(200, "i-0123456789abcdef0")
        else:
            self._reply(404, "")

    def _reply(self, code: int, body: str) -> None:
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def imds_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Imds)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_instance_id_from_imdsv2(imds_url: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("AWS_EC2_METADATA_DISABLED")
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds_url)
    assert worker_identity() == "i-0123456789abcdef0"
    assert Imds().get("no-such-path") is None


def test_disabled_metadata_falls_back_to_batch_job_then_hostname(imds_url: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds_url)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_BATCH_JOB_ID", "job-42")
    assert worker_identity() == "job-42"
    monkeypatch.delenv("AWS_BATCH_JOB_ID")
    assert worker_identity() == socket.gethostname()


def test_unanswering_endpoint_gives_up_within_a_second(monkeypatch: pytest.MonkeyPatch):
    # A listening socket that never answers: the request must time out, not hang.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    monkeypatch.delenv("AWS_EC2_METADATA_DISABLED")
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
    started = time.monotonic()
    assert worker_identity() == socket.gethostname()
    assert time.monotonic() - started < 1.5
    silent.close()
