"""The worker's settings and decisions, without processes or a table: when to stop and why
(``StopPolicy``), how often a failing sub-task runs (``RetryPolicy``), how an idle slot polls
(``Backoff``). Kept apart from the consumer loop so each decision is tested by itself."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .accounting import Placement
from .errors import EXIT_FAILED_ITEMS
from .runner import KILL_GRACE_SECONDS, SIGNAL_EXIT_BASE

EXIT_DRAINED = 0  # also: wall time reached, or linger expired behind other workers' items
EXIT_ERROR = 1
MAX_LOCAL_FAILURES = 3  # consecutive sub-tasks this machine could not start before the worker exits
STOP_MARGIN_SECONDS = 4.0  # after a stop request: the kill grace and this, then leave (exit within 10 s)


@dataclass(frozen=True)
class RetryPolicy:
    """How often a failing sub-task runs, and how long to wait between runs."""

    max_attempts: int = 2
    base_delay: float = 1.0
    max_delay: float = 60.0

    def allows(self, attempts: int) -> bool:
        return attempts < self.max_attempts

    def delay(self, attempts: int) -> float:
        return min(self.max_delay, self.base_delay * 2 ** max(0, attempts - 1))


class Backoff:
    """Exponential backoff with jitter for idle polling (reset after any claim)."""

    def __init__(self, initial: float = 0.2, cap: float = 10.0) -> None:
        self.initial, self.cap, self._next = initial, cap, initial

    def next(self) -> float:
        delay = self._next
        self._next = min(self.cap, self._next * 2)
        return delay * random.uniform(0.5, 1.0)

    def reset(self) -> None:
        self._next = self.initial


@dataclass(frozen=True)
class WorkerConfig:
    table: str
    items: int = 1
    nests: int = 1
    wall_time: float | None = None
    lease: float = 120.0
    max_attempts: int = 2
    retry_delay: float = 1.0
    timeout: float | None = None
    linger: float | None = None  # default: twice the lease
    outage_limit: float = 900.0  # exit 1 after the table was unreachable this long
    workdir: Path = Path(".")
    log_dir: Path = Path("pyanamo-logs")
    log_bucket: str | None = None
    placement: Placement | None = None  # where it runs and the price; None: this host, price 0
    outputs: str = "pyanamo-outputs"  # the committed outputs' store: a folder or s3://bucket/prefix
    max_output_size: int | None = None  # bytes per attempt; more fails the attempt
    run_as: str | None = None  # run sub-tasks as this user (the worker runs as root)
    job_role: str | None = None  # sub-tasks get this role's credentials, none of the worker's

    @property
    def slots(self) -> int:
        """Sub-tasks this worker may run at once: they share the instance (and its price)."""
        return self.items * self.nests

    @property
    def linger_seconds(self) -> float:
        return 2 * self.lease if self.linger is None else self.linger


class StopPolicy:
    """When the worker stops, and why: every decision and the one stop reason live here.

    ``clock`` is injectable so the decisions can be tested without waiting."""

    def __init__(self, config: WorkerConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self.started = clock()
        self.event = threading.Event()
        self.reason: str | None = None
        self.detail: str | None = None
        self.signal: int | None = None
        self.error = False
        self.deadline: float | None = None
        self._local_failures = 0
        self._lock = threading.Lock()

    @property
    def stopping(self) -> bool:
        return self.event.is_set()

    def stop(self, reason: str, *, signum: int | None = None, error: bool = False,
             detail: str | None = None) -> bool:
        """Record the stop (the first reason wins); True if this call stopped the worker."""
        with self._lock:
            if self.reason is not None:
                return False
            self.reason, self.signal, self.error, self.detail = reason, signum, error, detail
            self.deadline = self.clock() + KILL_GRACE_SECONDS + STOP_MARGIN_SECONDS
        self.event.set()
        return True

    def past_deadline(self) -> bool:
        """A stop was requested longer ago than the kill grace and the margin: give up waiting."""
        return self.deadline is not None and self.clock() >= self.deadline

    def time_to_deadline(self, default: float) -> float:
        """Seconds left before the stop deadline (``default`` when no stop was requested)."""
        return default if self.deadline is None else max(0.0, self.deadline - self.clock())

    def out_of_time(self) -> bool:
        wall = self.config.wall_time
        return wall is not None and self.clock() - self.started >= wall and self.stop("wall_time")

    def lingered(self, idle_since: float) -> bool:
        """Nothing claimable since ``idle_since``, only other workers' live items left."""
        return self.clock() - idle_since >= self.config.linger_seconds and self.stop("linger_expired")

    def unreachable(self, failing_since: float, error: str) -> bool:
        return (self.clock() - failing_since > self.config.outage_limit
                and self.stop("queue_unreachable", error=True, detail=error))

    def drained(self) -> None:
        self.stop("drained")

    def local_failure(self, error: str) -> int:
        """A sub-task could not be started here; the worker stops after a few in a row.
        Returns how many in a row so far."""
        with self._lock:
            self._local_failures += 1
            count = self._local_failures
        if count >= MAX_LOCAL_FAILURES:
            self.stop("cannot_run_subtasks", error=True, detail=error)
        return count

    def local_backoff(self) -> float:
        """How long a slot waits before its next claim: 0, or 2, 4, ... s after local failures."""
        with self._lock:
            count = self._local_failures
        return 0.0 if count == 0 else min(30.0, 2.0 ** count)

    def local_success(self) -> None:
        with self._lock:
            self._local_failures = 0

    def exit_code(self, items_failed: int) -> int:
        if self.error:
            return EXIT_ERROR
        if self.signal is not None:
            return SIGNAL_EXIT_BASE + self.signal
        return EXIT_FAILED_ITEMS if items_failed else EXIT_DRAINED
