"""`pyanamo worker --progress`: one line, redrawn in place, of what this worker and its table
have done, as `parallel --bar` shows it (the default when stderr is a terminal; JSON events are
then kept for warnings)."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, TextIO

from .errors import QueueError
from .gateway import TableGateway
from .schema import ItemState

REDRAW_SECONDS = 1.0
TABLE_SECONDS = 10.0  # the table's counts: one COUNT query per state and shard this often


class ProgressLine:
    """A daemon thread that redraws the line; ``close`` draws it a last time and ends it."""

    def __init__(self, worker: Any, table: TableGateway, out: TextIO = sys.stderr) -> None:
        self.worker = worker
        self.table = table
        self.out = out
        self.counts: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)

    def start(self) -> ProgressLine:
        self._thread.start()
        return self

    def line(self) -> str:
        w = self.worker
        here = f"{w.items_done} done, {w.items_failed} failed, {len(list(w.keeper.held()))} running here"
        if not self.counts:
            return here
        total = sum(self.counts.values())
        ended = sum(n for state, n in self.counts.items() if ItemState(state).ended)
        table = ", ".join(f"{n} {state}" for state, n in self.counts.items() if n)
        share = f" ({100 * ended / total:.0f}% ended)" if total else ""
        return f"{here} | table: {table}{share}"

    def _refresh_counts(self) -> None:
        try:
            self.counts = {s.value: self.table.count_in_state(s) for s in ItemState}
        except QueueError:
            pass  # the worker says so in its own events; the line keeps the last counts

    def _run(self) -> None:
        refreshed = 0.0
        while not self._stop.is_set():
            if time.monotonic() - refreshed >= TABLE_SECONDS:
                self._refresh_counts()
                refreshed = time.monotonic()
            self._draw()
            self._stop.wait(REDRAW_SECONDS)

    def _draw(self, end: str = "") -> None:
        self.out.write("\r\x1b[2K" + self.line() + end)
        self.out.flush()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._refresh_counts()
        self._draw(end="\n")
