"""Spot interruption notices: poll the metadata service and stop the worker when one comes.

EC2 posts `spot/instance-action` about two minutes before it reclaims a Spot instance; the
worker then stops as on SIGTERM: running sub-tasks are stopped and their items go back to todo
with finished sub-tasks kept, and the interruption does not count as an attempt.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from .events import emit
from .identity import Imds

POLL_SECONDS = 2.0


class SpotWatcher:
    def __init__(self, imds: Imds, on_notice: Callable[[str], None], interval: float = POLL_SECONDS) -> None:
        self.imds = imds
        self.on_notice = on_notice
        self.interval = interval
        self._thread = threading.Thread(target=self._run, name="spot-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(self.interval)
            notice = self.imds.get("spot/instance-action")
            if notice:
                emit("spot_interruption", notice=notice)
                self.on_notice(notice)
                return
