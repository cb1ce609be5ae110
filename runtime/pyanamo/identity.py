"""Who is this worker: the EC2 instance ID (IMDSv2), else the Batch job ID, else the hostname."""

from __future__ import annotations

import os
import socket
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

DEFAULT_IMDS_ENDPOINT = "http://169.254.169.254"
TOKEN_TTL_SECONDS = "21600"


class Imds:
    """A minimal IMDSv2 client (token, then GET), honouring the standard AWS variables."""

    def __init__(self, endpoint: str | None = None, timeout: float = 1.0) -> None:
        self.endpoint = (
            endpoint or os.environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT") or DEFAULT_IMDS_ENDPOINT
        ).rstrip("/")
        self.timeout = timeout
        # Only http(s): an endpoint from the environment must not make urlopen read files.
        self.disabled = (
            os.environ.get("AWS_EC2_METADATA_DISABLED", "").lower() == "true"
            or urllib.parse.urlparse(self.endpoint).scheme not in {"http", "https"}
        )
        self._token: str | None = None

    def _fetch_token(self) -> str:
        request = urllib.request.Request(
            f"{self.endpoint}/latest/api/token",
            method="PUT",
            headers={"X-aws-ec2-metadata-token-ttl-seconds": TOKEN_TTL_SECONDS},
        )
        # The endpoint's scheme is checked (http/https only) in __init__.
        with urllib.request.urlopen(request, timeout=self.timeout) as response:  # nosec B310
            return response.read().decode()

    def get(self, path: str) -> str | None:
        """The text at ``/latest/meta-data/<path>``, or None if absent or unreachable."""
        if self.disabled:
            return None
        for _ in range(2):  # a second try with a fresh token if the first one was stale
            try:
                if self._token is None:
                    self._token = self._fetch_token()
                request = urllib.request.Request(
                    f"{self.endpoint}/latest/meta-data/{path}",
                    headers={"X-aws-ec2-metadata-token": self._token},
                )
                # The endpoint's scheme is checked (http/https only) in __init__.
                with urllib.request.urlopen(request, timeout=self.timeout) as response:  # nosec B310
                    return response.read().decode().strip() or None
            except urllib.error.HTTPError as exc:
                if exc.code == 401:
                    self._token = None
                    continue
                return None
            except (OSError, ValueError):
                return None
        return None


def off_ec2_identity() -> str:
    """Who the worker is without an instance ID: the Batch job ID, else the hostname."""
    return os.environ.get("AWS_BATCH_JOB_ID") or socket.gethostname()


@dataclass(frozen=True)
class WorkerIdentity:
    """Who this worker is: ``owner`` is recorded as ``InstanceID`` in the items it holds;
    ``instance_id`` is set on EC2 only (then Spot notices are watched)."""

    owner: str
    instance_id: str | None
    worker_id: str = ""


def worker_identity(imds: Imds | None = None) -> WorkerIdentity:
    """The EC2 instance ID (IMDSv2), else the Batch job ID, else the hostname; one IMDS lookup."""
    instance_id = (imds or Imds()).get("instance-id")
    return WorkerIdentity(instance_id or off_ec2_identity(), instance_id, f"{socket.gethostname()}:{os.getpid()}")
