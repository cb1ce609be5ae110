"""PyAnamo's exceptions: errors for the user, and typed DynamoDB failures from one translation.

Everything that talks to DynamoDB goes through ``translate`` (via ``TaskQueue``), so callers
catch what happened (``ConditionFailed``, ``ItemRejected``, ...) instead of matching text.
"""

from __future__ import annotations

from typing import Any

import botocore.exceptions

EXIT_FAILED_ITEMS = 3  # `worker` drained but items it finished failed; `status`: the table has failed items


class PyAnamoError(Exception):
    """An error for the user: printed as one line, exits with ``exit_code``."""

    exit_code = 1


class UsageError(PyAnamoError):
    """Bad input or usage (exit 2)."""

    exit_code = 2


class MalformedItem(PyAnamoError):
    """An item that PyAnamo cannot run as stored (written by another tool, or edited by hand)."""

    def __init__(self, item_id: str, reason: str) -> None:
        self.item_id = item_id
        self.reason = reason
        super().__init__(f"item {item_id!r} is malformed: {reason}")


class QueueError(Exception):
    """A DynamoDB request failed. The base class means: an outage or an error worth retrying."""


class ConditionFailed(QueueError):
    """A conditional write's condition did not hold; ``old`` is the item as the server returned
    it with the failure (None where the server does not, e.g. dynalite)."""

    def __init__(self, message: str, old: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.old = old


class ItemRejected(QueueError):
    """DynamoDB refused the write as invalid (ValidationException: item too large, a path into
    a value that is not a map, ...). Retrying the same write cannot succeed."""


class Throttled(QueueError):
    """Throttled past boto3's retries."""


class Unreachable(QueueError):
    """The endpoint could not be reached (connection refused, timed out, dropped)."""


class TableMissing(QueueError):
    """The table does not exist."""


class AccessDenied(QueueError):
    """Credentials missing, refused or expired."""


_THROTTLING = {"ThrottlingException", "ProvisionedThroughputExceededException", "RequestLimitExceeded",
               "Throttling", "TooManyRequestsException"}
_DENIED = {"UnrecognizedClientException", "InvalidSignatureException", "ExpiredTokenException",
           "AccessDeniedException", "MissingAuthenticationTokenException"}


def error_code(exc: BaseException) -> str:
    if isinstance(exc, botocore.exceptions.ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def translate(exc: BaseException) -> QueueError:
    """The typed form of an exception raised by a boto3 DynamoDB call."""
    code = error_code(exc)
    message = str(exc)
    if isinstance(exc, botocore.exceptions.ClientError):
        message = exc.response.get("Error", {}).get("Message", "") or message
        if code == "ConditionalCheckFailedException":
            old = exc.response.get("Item")
            return ConditionFailed(message, old if isinstance(old, dict) else None)
        if code == "ValidationException":
            return ItemRejected(message)
        if code in _THROTTLING:
            return Throttled(message)
        if code == "ResourceNotFoundException":
            return TableMissing(message)
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in _DENIED or status == 403:  # moto answers a refused DynamoDB call in IAM's XML: code "403"
            return AccessDenied(f"{code}: {message}"[:500])
        return QueueError(f"{code}: {message}")
    if isinstance(exc, (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError)):
        return Unreachable(message)
    if isinstance(exc, (botocore.exceptions.NoCredentialsError, botocore.exceptions.PartialCredentialsError)):
        return AccessDenied(message)
    return QueueError(message)


BOTO_ERRORS = (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError)
