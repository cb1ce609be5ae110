"""DynamoDB request accounting for benchmarks: calls by operation, conflicts, capacity used.

The benchmarks set ``PYANAMO_STATS_FILE=path`` and put ``bench/hooks`` on PYTHONPATH; its
``sitecustomize`` registers ``handlers()`` with botocore, so every DynamoDB client of a `pyanamo`
command counts its calls and asks for ``ReturnConsumedCapacity``, and the totals are written to
``path`` as JSON when the command exits. Tests install a collector on one client (``install``).
"""

from __future__ import annotations

import atexit
import json
import os
import threading
import time
from collections import Counter
from typing import Any

STATS_ENV = "PYANAMO_STATS_FILE"
_CAPACITY_OPERATIONS = {
    "GetItem", "PutItem", "UpdateItem", "DeleteItem", "Query", "Scan", "BatchGetItem", "BatchWriteItem",
}


class RequestStats:
    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.items_read = 0  # Query/Scan ScannedCount: what the service read to answer
        self.seconds: Counter[str] = Counter()  # time in each operation's calls, as the client saw it
        self.read_units = 0.0
        self.write_units = 0.0
        self._lock = threading.Lock()

    def handlers(self) -> list[tuple[str, Any]]:
        """(event, handler) pairs, in the form of botocore's ``BUILTIN_HANDLERS``."""
        return [("provide-client-params.dynamodb.*", self._ask_for_capacity),
                ("before-call.dynamodb.*", self._start_clock), ("after-call.dynamodb.*", self._count)]

    @staticmethod
    def _start_clock(context: dict, **_: Any) -> None:
        context["pyanamo_started"] = time.perf_counter()

    def install(self, client: Any) -> None:
        for event, handler in self.handlers():
            client.meta.events.register(event, handler)

    def _ask_for_capacity(self, params: dict, model: Any, **_: Any) -> None:
        if model.name in _CAPACITY_OPERATIONS:
            params.setdefault("ReturnConsumedCapacity", "TOTAL")
        if model.name == "Query" and params.get("Select") == "COUNT":
            with self._lock:  # "is anything left?" probes (drain checks, the scaler, status)
                self.calls["Query (COUNT probe)"] += 1

    def _count(self, parsed: dict, model: Any, context: dict | None = None, **_: Any) -> None:
        started = (context or {}).get("pyanamo_started")
        with self._lock:
            self.calls[model.name] += 1
            if started is not None:
                self.seconds[model.name] += time.perf_counter() - started
            code = (parsed.get("Error") or {}).get("Code")
            if code:
                self.errors[f"{model.name}:{code}"] += 1
            self.items_read += int(parsed.get("ScannedCount", 0))
            capacity = parsed.get("ConsumedCapacity") or []
            for entry in capacity if isinstance(capacity, list) else [capacity]:
                units = float(entry.get("CapacityUnits", 0))
                if model.name in {"GetItem", "Query", "Scan", "BatchGetItem"}:
                    self.read_units += units
                else:
                    self.write_units += units

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "calls": dict(self.calls),
                "seconds": {name: round(value, 4) for name, value in self.seconds.items()},
                "errors": dict(self.errors),
                "items_read": self.items_read,
                "read_units": round(self.read_units, 3),
                "write_units": round(self.write_units, 3),
            }


_active: RequestStats | None = None


def from_environment() -> RequestStats | None:
    """The process's stats collector if PYANAMO_STATS_FILE is set (written at exit)."""
    global _active
    path = os.environ.get(STATS_ENV)
    if not path:
        return None
    if _active is None:
        _active = RequestStats()
        collector = _active

        def write() -> None:
            with open(path, "w") as handle:
                json.dump(collector.snapshot(), handle)

        atexit.register(write)
    return _active
