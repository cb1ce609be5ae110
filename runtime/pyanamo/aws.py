"""DynamoDB clients, and AWS errors turned into one-line messages for users."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import boto3
import botocore.exceptions
from botocore.config import Config

from .errors import (
    BOTO_ERRORS,
    AccessDenied,
    PyAnamoError,
    QueueError,
    TableMissing,
    Unreachable,
    UsageError,
    translate,
)
from .local_secret import ACCESS_KEY, ProofCheck, read_secret

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
LOCAL_REGION = "us-east-1"
NO_REGION = ("no AWS region: set AWS_REGION or pass --region for AWS, or set AWS_ENDPOINT_URL_DYNAMODB for a local "
             "endpoint (pyanamo local prints the line)")


def where(client: Any) -> str:
    """Where a client's requests go, for the commands that write: a local endpoint, or which AWS
    region (and profile) — so that a user with an AWS profile never writes to AWS unawares."""
    url = client.meta.endpoint_url
    if _is_local(url) or "amazonaws.com" not in url:
        return f"endpoint {url}"
    profile = os.environ.get("AWS_PROFILE")
    return f"AWS region {client.meta.region_name}" + (f" (profile {profile})" if profile else "")


@dataclass(frozen=True)
class Endpoint:
    """Where DynamoDB is: ``url`` None means the standard boto3 resolution (AWS itself)."""

    url: str | None = None
    region: str | None = None


def endpoint_url(text: str) -> str:
    """A checked endpoint URL (``http(s)://host[:port]``); UsageError says what is wrong."""
    parsed = urlparse(text)
    try:
        port = parsed.port
    except ValueError:
        port = -1
    if parsed.scheme not in ("http", "https") or not parsed.hostname or port == -1:
        raise UsageError(f"--endpoint-url {text!r}: expected http://HOST[:PORT] or https://HOST[:PORT]"
                         + (f" (did you mean http://{text}?)" if "://" not in text else ""))
    return text


def _is_local(url: str | None) -> bool:
    return bool(url) and urlparse(url).hostname in LOCAL_HOSTS


def aws_client(service: str, endpoint: Endpoint, *, max_attempts: int = 4, pool: int = 10,
               validate: bool = True) -> Any:
    """A thread-safe low-level client for ``service``.

    boto3 already honours AWS_ENDPOINT_URL(_<SERVICE>), AWS_REGION and AWS_PROFILE; this adds
    dummy credentials and a default region when the endpoint is a local one (``pyanamo local``),
    and boto3's standard retry mode unless the environment chooses one. ``validate=False`` skips
    botocore's check of each request against the service model (a worker's requests are built by
    the gateway alone, and the service checks them anyway: it cost about 0.6 ms of CPU each).
    """
    # boto3 reads AWS_DEFAULT_REGION; AWS_REGION (what the AWS CLI and SDKs set) is honoured too.
    session = boto3.session.Session(region_name=endpoint.region or os.environ.get("AWS_REGION") or None)
    retries: dict[str, Any] = {}
    if "AWS_RETRY_MODE" not in os.environ:
        retries["mode"] = "standard"
    if "AWS_MAX_ATTEMPTS" not in os.environ:
        retries["total_max_attempts"] = max_attempts
    config = Config(
        retries=retries or None,  # type: ignore[arg-type]  # the keys are _RetryDict's
        connect_timeout=3,
        read_timeout=20,
        max_pool_connections=pool,
        parameter_validation=validate,
    )
    url = (
        endpoint.url
        or os.environ.get(f"AWS_ENDPOINT_URL_{service.upper()}")
        or os.environ.get("AWS_ENDPOINT_URL")
    )
    kwargs: dict[str, Any] = {"config": config}
    if endpoint.url:
        kwargs["endpoint_url"] = endpoint.url
    check = None
    if _is_local(url):
        if session.region_name is None:
            kwargs["region_name"] = LOCAL_REGION
        secret = read_secret() if service == "dynamodb" else None
        if secret is not None:  # the operator's pyanamo local: signed with its secret, proof required
            kwargs["aws_access_key_id"], kwargs["aws_secret_access_key"] = ACCESS_KEY, secret
            check = ProofCheck(secret, str(url))
        elif session.get_credentials() is None:
            kwargs["aws_access_key_id"] = "local"
            kwargs["aws_secret_access_key"] = "local"
    elif session.region_name is None:
        raise PyAnamoError(NO_REGION)
    client = session.client(service, **kwargs)  # type: ignore[call-overload]  # any service by name
    if check is not None:
        check.register(client)
    return client


def dynamodb_client(endpoint: Endpoint, *, max_attempts: int = 4, pool: int = 10, validate: bool = True) -> Any:
    return aws_client("dynamodb", endpoint, max_attempts=max_attempts, pool=pool, validate=validate)


def describe(exc: BaseException, table: str | None = None) -> PyAnamoError | None:
    """A user-facing error for an AWS/botocore exception or a typed queue error, or None if it
    is neither. The typed errors come from the queue's ``translate``; this never matches text."""
    original = exc.__cause__ if isinstance(exc, QueueError) and exc.__cause__ is not None else exc
    if isinstance(original, botocore.exceptions.NoCredentialsError):
        return PyAnamoError("no AWS credentials found: set AWS_PROFILE or AWS_ACCESS_KEY_ID for AWS, or "
                            "AWS_ENDPOINT_URL_DYNAMODB for a local endpoint (pyanamo local prints the line)")
    if isinstance(original, botocore.exceptions.NoRegionError):
        return PyAnamoError(NO_REGION)
    if isinstance(original, botocore.exceptions.EndpointConnectionError):
        return PyAnamoError(f"cannot reach the DynamoDB endpoint {original.kwargs.get('endpoint_url')}")
    if isinstance(original, BOTO_ERRORS):
        exc = translate(original)
    if isinstance(exc, TableMissing) and table:
        return PyAnamoError(f"table {table!r} does not exist (create it with: pyanamo create-table {table})")
    if isinstance(exc, AccessDenied):
        return PyAnamoError(f"AWS refused the request ({exc})")
    if isinstance(exc, Unreachable):
        return PyAnamoError(f"connection to DynamoDB failed: {exc}")
    if isinstance(exc, QueueError):
        return PyAnamoError(f"DynamoDB error: {exc}")
    return None
