"""The endpoint's clock, as every worker and command sees it: leases that no clock skew can break.

A lease is an expiry time written on the item by its holder and compared by everyone else with
their own "now". If machines' clocks disagree, a fast clock sees a live lease as expired (two runs
overlap) and a slow one keeps a dead worker's item for too long. So all lease times are read on
one clock that every party can see: the endpoint's, from the ``Date`` header of its answers.

``Date`` has one-second resolution. Each answer bounds the endpoint's time: it was between ``D``
and ``D + 1`` when the answer was made, which was after the request left and before the answer
came back. Those bounds, taken on this process's monotonic clock and intersected over all
answers, pin the offset between the two clocks to well under a second after a few requests
(answers that straddle a second boundary narrow it most), the way NTP filters its samples. The
local wall clock is used only while it lies within those bounds, so it may be wrong by any
amount, or be stepped, and leases still agree to within the bounds' width. If the endpoint's
clock is stepped, the bounds stop intersecting and start again.
"""

from __future__ import annotations

import threading
import time
from email.utils import parsedate_to_datetime

RESOLUTION = 1.0  # the Date header's, in seconds


class EndpointClock:
    """The endpoint's time, estimated from its answers' ``Date`` headers (thread-safe)."""

    def __init__(self) -> None:
        self._low: float | None = None  # bounds of (endpoint time - monotonic time)
        self._high: float | None = None
        self._lock = threading.Lock()

    def observe(self, sent: float, received: float, date: str | None) -> None:
        """One answer: sent and received on ``time.monotonic()``, and its ``Date`` header."""
        if not date:
            return
        try:
            stamp = parsedate_to_datetime(date).timestamp()
        except (TypeError, ValueError, IndexError):
            return
        low, high = stamp - received, stamp + RESOLUTION - sent
        with self._lock:
            if self._low is None or self._high is None or low > self._high or high < self._low:
                self._low, self._high = low, high  # the first answer, or the endpoint's clock was stepped
            else:
                self._low, self._high = max(self._low, low), min(self._high, high)

    def now(self) -> float:
        """Epoch seconds on the endpoint's clock: this machine's wall clock while the endpoint's
        answers agree with it (a machine kept in time by NTP, and every process of one machine,
        then agree exactly), else the nearest time the answers allow (within their bounds, under
        a second off). This machine's clock until an answer was seen."""
        local = time.time()
        with self._lock:
            if self._low is None or self._high is None:
                return local
            mono = time.monotonic()
            return min(max(local, mono + self._low), mono + self._high)

    def skew(self) -> float | None:
        """How far this machine's wall clock is ahead of the endpoint's (seconds), if known."""
        with self._lock:
            if self._low is None or self._high is None:
                return None
            offset = (self._low + self._high) / 2
        return time.time() - (time.monotonic() + offset)

    def uncertainty(self) -> float | None:
        """Half the width of the bounds: how far ``now`` may be from the endpoint's time."""
        with self._lock:
            return None if self._low is None or self._high is None else (self._high - self._low) / 2
