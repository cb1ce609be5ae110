"""Structured log events through `logging`: one JSON object per line on stderr, read by journald
or a person. ``configure`` (the worker command calls it) attaches the JSON handler; without it,
events follow the application's own logging setup."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

logger = logging.getLogger("pyanamo.events")


class JsonFormatter(logging.Formatter):
    """``{"ts": ..., "event": ..., **fields}``: the event name is the message."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        fields = getattr(record, "fields", {})
        return json.dumps({"ts": stamp.replace("+00:00", "Z"), "event": record.getMessage(), **fields}, default=str)


def configure(quiet: bool = False) -> None:
    """Events as JSON lines on stderr (none but warnings with ``quiet``)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logger.handlers[:] = [handler]
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False


def emit(event: str, **fields: Any) -> None:
    logger.info(event, extra={"fields": fields})
