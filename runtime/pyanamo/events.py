"""Structured log events: one JSON object per line on stderr (read by journald or a person)."""

from __future__ import annotations

import json
import sys
import threading
from typing import Any

from .model import utc_now_iso

_lock = threading.Lock()
enabled = True


def emit(event: str, **fields: Any) -> None:
    if not enabled:
        return
    line = json.dumps({"ts": utc_now_iso(), "event": event, **fields}, default=str)
    with _lock:
        print(line, file=sys.stderr, flush=True)
