"""Worker identity from a real (stub) IMDSv2 server on 127.0.0.1."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from pyanamo.identity import Imds, worker_identity

from helpers import StubImds


@pytest.fixture
def imds_url() -> Iterator[str]:
    with StubImds("i-0123456789abcdef0") as stub:
        yield stub.url


def test_instance_id_from_imdsv2(imds_url: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("AWS_EC2_METADATA_DISABLED")
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds_url)
    assert worker_identity().owner == worker_identity().instance_id == "i-0123456789abcdef0"
    assert Imds().get("no-such-path") is None


def test_disabled_metadata_falls_back_to_batch_job_then_hostname(imds_url: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds_url)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_BATCH_JOB_ID", "job-42")
    assert worker_identity().owner == "job-42" and worker_identity().instance_id is None
    monkeypatch.delenv("AWS_BATCH_JOB_ID")
    assert worker_identity().owner == socket.gethostname()


def test_unanswering_endpoint_gives_up_within_a_second(monkeypatch: pytest.MonkeyPatch):
    # A listening socket that never answers: the request must time out, not hang.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    monkeypatch.delenv("AWS_EC2_METADATA_DISABLED")
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
    started = time.monotonic()
    assert worker_identity().owner == socket.gethostname()
    assert time.monotonic() - started < 1.5
    silent.close()


def test_non_http_metadata_endpoint_is_refused(tmp_path, monkeypatch: pytest.MonkeyPatch):
    secret = tmp_path / "latest" / "meta-data"
    secret.mkdir(parents=True)
    (secret / "instance-id").write_text("i-from-a-file")
    monkeypatch.delenv("AWS_EC2_METADATA_DISABLED")
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", f"file://{tmp_path}")
    assert Imds().disabled and worker_identity().owner == socket.gethostname()
